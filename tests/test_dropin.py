"""Porting public AT code: the HE weight-norm mode through every framework (against AT_HE's
``.data``-overwrite model), the drop-in losses' options (crafting BN mode, crafting scale,
normal start, distance aliases) against a plain-torch oracle, ``unwrap`` of every wrapper,
the mode's single source of truth, and the at-he parity presets."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from conftest import require_backend
from heat_fast import HELinear
from heat_fast.training import Objective, pgd_at_loss, trades_loss
from heat_fast.training.crafting import crafting_mode, pgd_attack
from heat_fast.training.distributed import DistributedModel, unwrap
from heat_fast.training.frameworks import FRAMEWORKS, alp_loss, build_framework
from heat_fast.training.presets import PRESETS, preset

FEATURES, CLASSES, BATCH = 16, 5, 12


def body() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, FEATURES))


class HEModel(nn.Module):
    """features(x) → ``head`` (any module with ``weight`` (C, D)); forward gives its output."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.body, self.head = body(), head

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


class ATHEModel(HEModel):
    """The oracle, AT_HE's model: every forward first overwrites ``head.weight.data`` with its
    row-normalized value (no autograd through it), then returns the cosines x̂·Wᵀ of its
    bias-free Linear head."""

    def forward(self, x):
        self.head.weight.data = F.normalize(self.head.weight.data, dim=1)
        return F.normalize(self.body(x), dim=1) @ self.head.weight.t()


def start_weight():
    return torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(1)) * 3


def he_model(weight_norm=True) -> HEModel:
    head = HELinear(FEATURES, CLASSES, weight_norm=weight_norm)
    with torch.no_grad():
        head.weight.copy_(start_weight())
    return HEModel(head)


def oracle_model() -> ATHEModel:
    head = nn.Linear(FEATURES, CLASSES, bias=False)
    head.weight.data.copy_(start_weight())
    return ATHEModel(head)


def batches(steps=10):
    gen = torch.Generator().manual_seed(2)
    return [(torch.rand(BATCH, 3, 6, 6, generator=gen),
             torch.randint(0, CLASSES, (BATCH,), generator=gen)) for _ in range(steps)]


SCALE, MARGIN, EPS = 10.0, 0.2, 8 / 255
ALPHA = {"pgd-at": EPS / 4, "alp": EPS / 4, "trades": EPS / 4, "free-at": EPS, "fast-at": 1.25 * EPS}
STEPS = {"pgd-at": 3, "alp": 3, "trades": 3, "free-at": 2, "fast-at": 1}
# TRADES starts uniform here, not from x + 0.001·N: there the first step's KL gradient is ~0
# and float32 rounding differences between the fused ops and plain torch flip its sign
START = {"pgd-at": "uniform", "alp": "uniform", "trades": "uniform", "fast-at": "uniform"}


def margin_ce(cos, y):
    return F.cross_entropy(SCALE * (cos - MARGIN * F.one_hot(y, CLASSES)), y)


def kl_sum(adv_cos, clean_probs):
    return F.kl_div(F.log_softmax(SCALE * adv_cos, dim=1), clean_probs, reduction="sum")


class Oracle:
    """Each framework + HE as the public code writes it, in plain torch on AT_HE's model
    (whose forward returns the cosines); the attack loop is heat_fast's pgd_attack (tested on
    its own), called with the public crafting loss."""

    def __init__(self, name, model, backend):
        self.name, self.model, self.backend = name, model, backend
        self.generator = torch.Generator().manual_seed(3)
        self.delta = None

    def attack(self, x, loss_fn):
        return pgd_attack(self.model, x, loss_fn, EPS, ALPHA[self.name], STEPS[self.name],
                          START[self.name], self.generator, backend=self.backend)

    def loss(self, x, y):
        model = self.model
        if self.name == "trades":
            with torch.no_grad(), crafting_mode(model):
                clean_probs = F.softmax(SCALE * model(x), dim=1)
            x_adv = self.attack(x, lambda xa: kl_sum(model(xa), clean_probs))
            clean, adv = model(x), model(x_adv)
            return margin_ce(clean, y) + 6.0 * kl_sum(adv, F.softmax(SCALE * clean, dim=1)) / len(x)
        x_adv = self.attack(x, lambda xa: F.cross_entropy(SCALE * model(xa), y))
        if self.name == "alp":
            clean, adv = model(x), model(x_adv)
            return (0.5 * margin_ce(clean, y) + 0.5 * margin_ce(adv, y)
                    + 0.5 * F.mse_loss(clean, adv))
        return margin_ce(model(x_adv), y)

    def step(self, optimizer, x, y):
        if self.name != "free-at":
            loss = self.loss(x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.detach()
        delta = torch.zeros_like(x) if self.delta is None else self.delta
        losses = []
        for _ in range(STEPS["free-at"]):  # replays: one backward for weights and δ
            delta.requires_grad_(True)
            loss = margin_ce(self.model((x + delta).clamp(0, 1)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            x_adv = x + delta.detach() + ALPHA["free-at"] * delta.grad.sign()
            delta = torch.min(torch.max(x_adv, x - EPS), x + EPS) - x
            losses.append(loss.detach())
        self.delta = delta
        return torch.stack(losses).mean()


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def train(model, name, backend="auto", steps=10):
    """``steps`` SGD steps of heat_fast's framework ``name`` with HE; the losses."""
    options = {"start": START[name]} if name == "trades" else {}
    framework = build_framework(name, Objective(True, SCALE, MARGIN, backend), eps=EPS,
                                steps=STEPS[name], generator=torch.Generator().manual_seed(3),
                                **options)
    optimizer = sgd(model)
    return torch.stack([framework.train_step(model, optimizer, x, y).loss
                        for x, y in batches(steps)])


def run_against_oracle(name, backend="auto", steps=10):
    ours, oracle = he_model("project"), Oracle(name, oracle_model(), backend)
    got = train(ours, name, backend, steps)
    optimizer = sgd(oracle.model)
    expected = torch.stack([oracle.step(optimizer, x, y) for x, y in batches(steps)])
    probe = torch.rand(2, 3, 6, 6)
    ours(probe), oracle.model(probe)  # each forward projects the last step's update
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for (key, a), b in zip(oracle.model.state_dict().items(), ours.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=key)
    torch.testing.assert_close(ours.head.weight.norm(dim=1), torch.ones(CLASSES))
    return oracle.model


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_project_mode_trains_every_framework_like_the_data_overwrite_model(name):
    """10 SGD steps of an HE run with weight_norm "project" equal AT_HE's model (weights,
    BN statistics and losses to 1e-5; head rows unit-norm)."""
    oracle = run_against_oracle(name)
    differentiable = he_model(True)  # the default mode is another algorithm: off the sphere
    train(differentiable, name)
    assert (differentiable.head.weight.norm(dim=1) - 1).abs().min() > 1
    assert (F.normalize(differentiable.head.weight, dim=1) - oracle.head.weight).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_project_mode_on_every_backend(backend):
    """FastAT (1 attack step) keeps the Triton interpreter's share of CI small."""
    require_backend(backend)
    run_against_oracle("fast-at", backend, steps=10 if backend != "triton" else 4)


def oracle_pgd_at(model, x, y, steps, alpha, eps, craft_scale, scale, margin, start_seed):
    """PGD-AT + HE as Bag of Tricks without --BNeval crafts: BN in train mode throughout,
    CE on craft_scale·cos, start x + 0.001·N(0, I) (AT_HE's start), sign steps projected onto
    the ε-ball then clipped to [0, 1]; the loss CE(s·(cos − m·1_y)) on x_adv."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(start_seed))
    x_adv = x + 0.001 * noise
    for p in model.parameters():
        p.requires_grad_(False)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(craft_scale * model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps)
        x_adv = x_adv.clamp(0, 1)
    for p in model.parameters():
        p.requires_grad_(True)
    return F.cross_entropy(scale * (model(x_adv) - margin * F.one_hot(y, CLASSES)), y)


def bn(model):
    return model.body[1]


def test_drop_in_options_craft_in_train_mode_on_unscaled_cosines_from_a_normal_start():
    x, y = batches(1)[0]
    ours, oracle = he_model(), he_model()
    loss = pgd_at_loss(ours, x, y, None, 2 / 255, 8 / 255, 3, "normal", he=True, scale=10.0,
                       margin=0.2, backend="reference",
                       generator=torch.Generator().manual_seed(4), distance="Linf",
                       eval_mode=False, craft_scale=1.0)
    expected = oracle_pgd_at(oracle, x, y, 3, 2 / 255, 8 / 255, 1.0, 10.0, 0.2, start_seed=4)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # train-mode crafting: 3 crafting forwards + the training forward update the BN statistics
    assert int(bn(ours).num_batches_tracked) == 4
    torch.testing.assert_close(bn(ours).running_mean, bn(oracle).running_mean)
    torch.testing.assert_close(bn(ours).running_var, bn(oracle).running_var)
    assert ours.training


def test_drop_in_defaults_craft_in_eval_mode_on_scaled_cosines():
    x, y = batches(1)[0]
    model = he_model()
    before = bn(model).running_mean.clone()
    kwargs = dict(he=True, scale=10.0, margin=0.2, backend="reference")
    eval_loss = pgd_at_loss(model, x, y, None, 2 / 255, 8 / 255, 3, "normal",
                            generator=torch.Generator().manual_seed(4), **kwargs)
    assert int(bn(model).num_batches_tracked) == 1  # only the training forward
    assert not torch.equal(bn(model).running_mean, before)
    scaled = [pgd_at_loss(he_model(), x, y, None, 2 / 255, 8 / 255, 3, "normal",
                          generator=torch.Generator().manual_seed(4), eval_mode=False,
                          craft_scale=s, **kwargs) for s in (None, 10.0, 1.0)]
    torch.testing.assert_close(scaled[0], scaled[1])  # craft_scale None means s
    assert abs(scaled[1].item() - scaled[2].item()) > 1e-4  # s = 1 crafts other examples
    assert eval_loss.requires_grad


@pytest.mark.parametrize("loss_fn", [pgd_at_loss, alp_loss])
def test_drop_in_start_options(loss_fn):
    """normal: x + 0.001·N (no ε-ball draw); uniform (the default): anywhere in the ball."""
    x, y = batches(1)[0]
    for start in ("normal", "uniform"):
        inputs = []
        model = he_model()
        model.body.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
        loss_fn(model, x, y, None, 2 / 255, 8 / 255, 0, random_start=start, he=True,
                backend="reference", generator=torch.Generator().manual_seed(5))
        offset = inputs[-1] - x  # 0 attack steps: the training forward is on the start
        if start == "normal":
            expected = 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
            torch.testing.assert_close(offset, expected)
        else:
            assert offset.abs().max() <= 8 / 255 + 1e-6 and offset.abs().max() > 4 / 255


def test_distance_aliases():
    x, y = batches(1)[0]

    def loss(fn, distance, *args):
        return fn(he_model(), x, y, None, *args, distance=distance, he=True,
                  generator=torch.Generator().manual_seed(6))

    for fn, args in ((pgd_at_loss, (2 / 255, 8 / 255, 2)), (trades_loss, (0.003, 0.031, 2))):
        linf = [loss(fn, d, *args) for d in ("l_inf", "Linf", "linf")]
        l2 = [loss(fn, d, *args) for d in ("l_2", "L2", "l2")]
        for group in (linf, l2):
            assert all(torch.equal(group[0], other) for other in group[1:])
        with pytest.raises(ValueError, match="distance must be 'linf' or 'l2'"):
            loss(fn, "l_1", *args)


@pytest.fixture
def process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_unwrap_every_wrapper_nested(process_group):
    net = he_model()
    assert unwrap(net) is net
    for wrapped in (nn.DataParallel(net), torch.compile(net), DistributedDataParallel(net),
                    DistributedModel(net, torch.device("cpu")),
                    torch.compile(nn.DataParallel(net)),
                    nn.DataParallel(torch.compile(nn.DataParallel(net)))):
        assert unwrap(wrapped) is net


def test_drop_in_loss_through_data_parallel_and_compile_wrappers():
    x, y = batches(1)[0]
    expected = pgd_at_loss(he_model(), x, y, None, perturb_steps=2, he=True,
                           generator=torch.Generator().manual_seed(7))
    for wrap in (nn.DataParallel, torch.compile):
        got = pgd_at_loss(wrap(he_model()), x, y, None, perturb_steps=2, he=True,
                          generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(got, expected)


def test_bare_ddp_with_he_is_refused(process_group):
    x, y = batches(1)[0]
    with pytest.raises(TypeError, match="Distributed.wrap"):
        pgd_at_loss(DistributedDataParallel(he_model()), x, y, he=True, perturb_steps=1)


def test_the_head_holds_the_mode_and_a_contradiction_raises():
    projected, default = he_model("project"), he_model()
    assert Objective(True).head_weight_norm(projected) == "project"
    assert Objective(True).head_weight_norm(default) is True
    assert Objective(True, weight_norm="project").head_weight_norm(projected) == "project"
    assert Objective(True, weight_norm="project").head_weight_norm(oracle_model()) == "project"
    assert Objective(True).head_weight_norm(oracle_model()) is True
    x, y = batches(1)[0]
    with pytest.raises(ValueError, match="contradicts the model's HELinear head"):
        pgd_at_loss(default, x, y, he=True, perturb_steps=1, weight_norm="project")
    with pytest.raises(ValueError, match="weight_norm must be None"):
        Objective(True, weight_norm="detach")
    with pytest.raises(ValueError, match="craft_scale"):
        build_framework("free-at", Objective(True, craft_scale=1.0))


def test_at_he_presets_are_the_public_recipe():
    """Values of AT_HE's train_adv_cifar10.py and the commands of its CIFAR-10 README."""
    common = {"dataset": "cifar10", "model": "wrn-34-10", "he": True, "eps": 0.031,
              "alpha": 0.007, "steps": 10, "start": "normal", "bn_eval": True,
              "weight_norm": "project", "epochs": 77, "milestones": [74], "lr": 0.1,
              "momentum": 0.9, "batch_size": 128, "crop_padding": 4, "flip": True,
              "schedule": "multistep"}
    recipes = {"at-he-pgd": {"framework": "pgd-at", "scale": 10.0, "margin": 0.2,
                             "weight_decay": 5e-4},
               "at-he-trades": {"framework": "trades", "scale": 15.0, "margin": 0.2,
                                "beta": 6.0, "weight_decay": 2e-4},
               "at-he-alp": {"framework": "alp", "scale": 20.0, "margin": 0.3,
                             "alp_weight": 0.5, "weight_decay": 2e-4}}
    for name, specific in recipes.items():
        values = preset(name)
        assert {k: values[k] for k in {**common, **specific}} == {**common, **specific}
    assert {"pgd-at-he", "trades-he", "alp-he"} <= set(PRESETS)  # the older names stay


def test_weight_norm_flag_round_trips_through_checkpoint_and_eval(tmp_path, capsys):
    from heat_fast.cli import eval as eval_cli
    from heat_fast.cli.train import main as train_main
    from heat_fast.training import load_model
    from heat_fast.training.checkpoint import save_checkpoint

    out = tmp_path / "run"
    assert train_main(["--framework", "alp", "--he", "--weight-norm", "project", "--dataset",
                       "digits", "--epochs", "1", "--max-steps-per-epoch", "2", "--steps", "1",
                       "--batch-size", "16", "--eval-examples", "8", "--eval-steps", "1",
                       "--no-progress", "--threads", "1", "--out", str(out)]) == 0
    assert "HE (weight norm project)" in capsys.readouterr().out
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["config"]["weight_norm"] == "project"
    model, config = load_model(out / "last.pt")
    assert model.head.weight_norm == "project" and config["weight_norm"] == "project"
    model(torch.rand(2, 1, 8, 8))
    torch.testing.assert_close(model.head.weight.norm(dim=1), torch.ones(10))
    assert eval_cli.main([str(out), "--attacks", "fgsm", "--n-examples", "8",
                          "--no-progress"]) == 0
    del state["config"]["weight_norm"]  # a checkpoint from before the setting
    save_checkpoint(tmp_path / "old.pt", state)
    assert load_model(tmp_path / "old.pt")[0].head.weight_norm is True
    capsys.readouterr()
    assert train_main(["--weight-norm", "project", "--dataset", "digits", "--no-progress",
                       "--out", str(tmp_path / "plain")]) == 2
    assert "weight_norm is a mode of the HE head" in capsys.readouterr().err
