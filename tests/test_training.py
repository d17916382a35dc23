"""Frameworks ± HE, the shared crafting loop, drop-in losses, Trainer, presets, checkpoints."""
import copy
import inspect

import pytest
import torch

import heat_fast.training.crafting as crafting
import heat_fast.training.objective as objective_module
from heat_fast.data import TensorLoader, load_dataset
from heat_fast.models import build_model
from heat_fast.training import (FRAMEWORKS, CheckpointError, Objective, Trainer, alp_loss,
                                build_framework, crafting_mode, load_model, pgd_at_loss,
                                pgd_attack, trades_loss)
from heat_fast.training.checkpoint import save_checkpoint
from heat_fast.training.evaluate import evaluate_pgd
from heat_fast.training.presets import PRESET_NAMES, preset
from heat_fast.training.run import build_config
from heat_fast.training.schedules import lr_factor

EPS = 0.1


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(data.train_x.shape[0], generator=gen)[:64]
    return data, data.train_x[idx], data.train_y[idx]


def _model(data, he, seed=0):
    torch.manual_seed(seed)
    return build_model("small-cnn", 10, he, 1, 8, data.mean, data.std)


def _framework(name, he, backend="auto", seed=0, steps=3):
    settings = {"eps": EPS, "generator": torch.Generator().manual_seed(seed)}
    if name != "fast-at":
        settings["steps"] = 2 if name == "free-at" else steps
    return build_framework(name, Objective(he, 15.0, 0.2, backend), **settings)


@pytest.mark.parametrize("name", FRAMEWORKS)
@pytest.mark.parametrize("he", [False, True])
def test_each_framework_lowers_its_training_loss(digits, name, he):
    data, x, y = digits
    model = _model(data, he)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    framework = _framework(name, he, steps=2)
    model.train()
    losses = [float(framework.train_step(model, optimizer, x, y).loss) for _ in range(10)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, losses


def _fixed_start(x, eps, norm="linf", clip=(0.0, 1.0), generator=None, backend="auto"):
    """A backend-independent uniform start, so that only the ops' arithmetic is compared."""
    noise = torch.rand(x.shape, generator=generator)
    return (x + (2 * noise - 1) * eps).clamp(0, 1)


@pytest.mark.parametrize("name", FRAMEWORKS)
@pytest.mark.parametrize("he", [False, True])
def test_fused_and_reference_give_the_same_loss_and_gradients(digits, monkeypatch, name, he):
    monkeypatch.setattr(crafting, "random_init", _fixed_start)
    data, x, y = digits
    results = []
    for backend in ("reference", "auto"):
        model = _model(data, he)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        framework = _framework(name, he, backend)
        if name == "free-at":
            stats = framework.train_step(model, optimizer, x, y)
            results.append((stats.loss, [p.detach().clone() for p in model.parameters()],
                            framework.delta.clone()))
            continue
        loss = framework.loss(model, x, y).loss
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results.append((loss.detach(), grads, None))
    (loss_r, grads_r, delta_r), (loss_a, grads_a, delta_a) = results
    torch.testing.assert_close(loss_a, loss_r, rtol=1e-5, atol=1e-6)
    for g_a, g_r in zip(grads_a, grads_r):
        torch.testing.assert_close(g_a, g_r, rtol=1e-4, atol=1e-6)
    if delta_r is not None:
        torch.testing.assert_close(delta_a, delta_r, rtol=0, atol=1e-6)


def _mixed_modes(model):
    model.train()
    model.body[1].eval()          # a conv-BN-ReLU block in eval mode
    model.body[3][1].eval()       # a single BN layer in eval mode
    return {name: m.training for name, m in model.named_modules()}


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_module_modes_restored_and_bn_eval_while_crafting(digits, name):
    data, x, y = digits
    model = _model(data, True)
    before = _mixed_modes(model)
    bn = model.body[0][1]
    seen = []
    bn.register_forward_hook(lambda m, i, o: seen.append(m.training))
    framework = _framework(name, True, steps=3)
    framework.train_step(model, torch.optim.SGD(model.parameters(), lr=0.01), x, y)
    assert {n: m.training for n, m in model.named_modules()} == before
    if name in ("pgd-at", "alp"):
        assert seen[:3] == [False] * 3 and seen[3] is True
    if name == "trades":
        assert seen[:4] == [False] * 4 and seen[4] is True  # clean probs + 3 steps, then train
    if name == "fast-at":
        assert seen[:2] == [False, True]
    if name == "free-at":
        assert seen[:2] == [True, True]  # one shared forward per replay, in train mode


def test_modes_restored_by_drop_in_losses_and_evaluation(digits):
    data, x, y = digits
    model = _model(data, True)
    before = _mixed_modes(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    pgd_at_loss(model, x, y, optimizer, 0.02, EPS, 2, he=True)
    alp_loss(model, x, y, optimizer, 0.02, EPS, 2, he=True)
    trades_loss(model, x, y, optimizer, 0.02, EPS, 2, beta=6.0, he=True)
    evaluate_pgd(model, x, y, Objective(True), EPS, 0.02, 2)
    assert {n: m.training for n, m in model.named_modules()} == before
    crafting_off = _mixed_modes(model)
    with crafting_mode(model, eval_mode=False):
        assert {n: m.training for n, m in model.named_modules()} == crafting_off


def test_crafting_uses_autograd_grad_and_stays_in_the_ball(digits):
    data, x, y = digits
    model = _model(data, False)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    obj = Objective(False)
    x_adv = pgd_attack(model, x, lambda xa: obj.craft_loss(model, xa, y), EPS, 0.03, 5,
                       generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert obj.craft_loss(model, x_adv, y) > obj.craft_loss(model, x, y)


def _record_margins(monkeypatch):
    margins = []
    real = objective_module.he_cross_entropy

    def spy(*args, **kwargs):
        margins.append(kwargs["margin"])
        return real(*args, **kwargs)

    monkeypatch.setattr(objective_module, "he_cross_entropy", spy)
    return margins


@pytest.mark.parametrize("name,expected", [
    ("pgd-at", [0.0, 0.0, 0.0, 0.2]),   # craft on s·cos without margin, train with it
    ("fast-at", [0.0, 0.2]),
    ("alp", [0.0, 0.0, 0.0, 0.2, 0.2]),  # both CE terms of the outer loss carry the margin
    ("trades", [0.2]),                   # KL crafts; only the clean CE uses he_cross_entropy
    ("free-at", [0.2, 0.2]),             # the shared loss of every replay has the margin
])
def test_he_margin_only_where_spec_puts_it(digits, monkeypatch, name, expected):
    data, x, y = digits
    margins = _record_margins(monkeypatch)
    model = _model(data, True)
    _framework(name, True, steps=3).train_step(model, torch.optim.SGD(model.parameters(), lr=0.01), x, y)
    assert margins == expected


def test_alp_pairs_unscaled_cosines(digits, monkeypatch):
    data, x, y = digits
    model = _model(data, True)
    framework = build_framework("alp", Objective(True, 20.0, 0.3), eps=EPS, steps=0,
                                start="none", alp_weight=0.5)
    loss = framework.loss(model, x, y).loss
    x_adv = x  # zero steps from no start: the pairing term vanishes
    obj = Objective(True, 20.0, 0.3)
    ce = obj.cross_entropy(obj.forward(model, x), y, margin=True)
    torch.testing.assert_close(loss, 0.5 * ce + 0.5 * obj.cross_entropy(obj.forward(model, x_adv), y, margin=True))
    framework = build_framework("alp", Objective(True, 20.0, 0.3), eps=EPS, steps=2,
                                alp_weight=1.0, generator=torch.Generator().manual_seed(0))
    result = framework.loss(model, x, y)
    pairing = torch.nn.functional.mse_loss(result.clean.logits, result.adv.logits)
    assert float(result.clean.logits.detach().abs().max()) <= 1.0  # cosines, not s·cos
    expected = 0.5 * obj.cross_entropy(result.clean, y, True) + 0.5 * obj.cross_entropy(result.adv, y, True) + pairing
    torch.testing.assert_close(result.loss, expected)


def test_free_at_replays_each_batch_m_times_and_carries_delta(digits):
    data, x, y = digits
    model = _model(data, True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    steps = []
    real_step = optimizer.step
    optimizer.step = lambda *a, **k: (steps.append(1), real_step(*a, **k))[1]
    inputs = []
    # the body sees normalized inputs; undo the normalization to get the [0, 1] batch back
    model.body.register_forward_pre_hook(
        lambda m, args: inputs.append(args[0].detach() * model.std + model.mean))
    framework = build_framework("free-at", Objective(True, 10.0, 0.2), eps=EPS, steps=3)
    x1, y1, x2, y2 = x[:32], y[:32], x[32:], y[32:]
    framework.train_step(model, optimizer, x1, y1)
    assert len(steps) == 3
    train_inputs = inputs[:3]  # the 4th forward is the clean-accuracy pass
    assert torch.equal(train_inputs[0], x1)  # δ starts at zero
    for a in train_inputs[1:]:
        assert (a - x1).abs().max() <= EPS + 1e-6 and not torch.equal(a, x1)
    carried = framework.delta.clone()
    assert carried.abs().max() > 0 and carried.abs().max() <= EPS + 1e-6
    inputs.clear()
    framework.train_step(model, optimizer, x2, y2)
    assert len(steps) == 6
    torch.testing.assert_close(inputs[0], (x2 + carried).clamp(0, 1), rtol=0, atol=1e-6)
    assert (inputs[0] - x2).abs().max() > EPS / 2  # batch 2 starts from batch 1's δ, not 0


def test_fast_at_fgsm_from_uniform_start_with_alpha_1_25_eps(digits, monkeypatch):
    data, x, y = digits
    calls = {"init": [], "step": []}
    real_init, real_step = crafting.random_init, crafting.pgd_step

    def init_spy(x_nat, eps, *a, **k):
        calls["init"].append(eps)
        return real_init(x_nat, eps, *a, **k)

    def step_spy(x_adv, grad, x_nat, eps, alpha, **k):
        calls["step"].append((eps, alpha, x_adv.clone()))
        return real_step(x_adv, grad, x_nat, eps, alpha, **k)

    monkeypatch.setattr(crafting, "random_init", init_spy)
    monkeypatch.setattr(crafting, "pgd_step", step_spy)
    model = _model(data, False)
    framework = build_framework("fast-at", Objective(False), eps=EPS,
                                generator=torch.Generator().manual_seed(0))
    assert framework.alpha == pytest.approx(1.25 * EPS) and framework.steps == 1
    framework.train_step(model, torch.optim.SGD(model.parameters(), lr=0.01), x, y)
    assert calls["init"] == [EPS] and len(calls["step"]) == 1
    eps, alpha, start = calls["step"][0]
    assert (eps, alpha) == (EPS, pytest.approx(1.25 * EPS))
    offset = start - x
    assert offset.abs().max() <= EPS + 1e-6 and offset.abs().max() > 0.5 * EPS
    with pytest.raises(ValueError, match="one FGSM step"):
        build_framework("fast-at", Objective(False), eps=EPS, steps=3)


def test_trades_loss_is_a_drop_in(digits):
    params = list(inspect.signature(trades_loss).parameters)
    assert params[:9] == ["model", "x_natural", "y", "optimizer", "step_size", "epsilon",
                          "perturb_steps", "beta", "distance"]
    defaults = {k: v.default for k, v in inspect.signature(trades_loss).parameters.items()}
    assert (defaults["step_size"], defaults["epsilon"], defaults["perturb_steps"],
            defaults["beta"], defaults["distance"]) == (0.003, 0.031, 10, 1.0, "l_inf")
    data, x, y = digits
    model = _model(data, False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    loss = trades_loss(model, x, y, optimizer, 0.02, EPS, 2, beta=6.0)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    assert loss.dim() == 0 and loss.requires_grad
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert trades_loss(model, x, y, optimizer, 0.02, 0.5, 2, distance="l_2", he=False) > 0
    with pytest.raises(ValueError, match="distance"):
        trades_loss(model, x, y, optimizer, distance="l_1")


def test_he_requires_features_and_head():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(TypeError, match="features"):
        pgd_at_loss(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), he=True, perturb_steps=1)


def test_trainer_with_a_user_model_loader_and_options(digits):
    data, x, y = digits
    model = _model(data, True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = [(x[:32], y[:32]), (x[32:], y[32:])]
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)
    trainer = Trainer(model, optimizer, loader, "trades", eps=EPS, steps=2, beta=6.0,
                      scheduler=scheduler, bf16=True, channels_last=True, progress=False)
    assert trainer.framework.objective.he is True  # taken from model.he
    history = trainer.fit(2)
    assert len(history) == 2 and all(h["steps"] == 2 for h in history)
    assert all(0 <= h["train_adv_acc"] <= 1 and torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.25)
    with pytest.raises(ValueError, match="unknown framework"):
        Trainer(model, optimizer, loader, "mart")


def test_trainer_runs_a_framework_with_the_four_argument_train_step(digits):
    """A Framework subclass written against train_step(model, optimizer, x, y) that builds
    StepStats without clean_count trains: the Trainer passes no measure_clean to it and
    counts the batch's clean accuracy as measured."""
    data, x, y = digits
    from heat_fast.training.frameworks import PGDAT
    from heat_fast.training.frameworks.base import StepStats, correct_count

    class OwnStep(PGDAT):
        def train_step(self, model, optimizer, x, y):
            result = self.loss(model, x, y)
            optimizer.zero_grad()
            result.loss.backward()
            optimizer.step()
            clean = correct_count(self.clean_outputs(model, x), y)
            return StepStats(result.loss.detach(), clean, correct_count(result.adv, y),
                             int(y.shape[0]))

    model = _model(data, True)
    framework = OwnStep(Objective(True, 15.0, 0.2), eps=EPS, steps=2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05),
                      [(x[:32], y[:32]), (x[32:], y[32:])], framework, progress=False)
    stats = trainer.train_epoch()
    assert stats["steps"] == 2 and 0 <= stats["train_clean_acc"] <= 1
    assert StepStats(torch.zeros(()), torch.zeros(()), torch.zeros(()), 5).clean_count == 5


def test_trainer_max_steps_and_tensor_loader(digits):
    data, _, _ = digits
    model = _model(data, False)
    loader = TensorLoader(data.train_x, data.train_y, 32, generator=torch.Generator().manual_seed(0))
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), loader, "fast-at",
                      eps=EPS, max_steps_per_epoch=3, progress=False)
    assert trainer.train_epoch()["steps"] == 3


def test_presets_reproduce_recipes_and_flags_override():
    assert {"pgd-at", "pgd-at-he", "alp-he", "trades", "trades-he", "free-at", "free-at-he",
            "fast-at", "fast-at-he"} <= set(PRESET_NAMES)
    he = preset("pgd-at-he")
    assert (he["model"], he["eps"], he["alpha"], he["steps"], he["margin"], he["weight_decay"],
            he["lr"], he["momentum"], he["batch_size"], he["he"]) == (
        "wrn-34-10", 8 / 255, 2 / 255, 10, 0.2, 5e-4, 0.1, 0.9, 128, True)
    assert he["scale"] in (10.0, 15.0) and he["epochs"] == 77 and he["milestones"] == [74]
    assert preset("alp-he")["scale"] == 20.0 and preset("alp-he")["margin"] == 0.3
    assert preset("trades-he")["beta"] == 6.0
    free = preset("free-at-he")
    assert (free["model"], free["dataset"], free["steps"], free["epochs"], free["eps"]) == (
        "resnet50", "imagenet", 4, 23, 4 / 255)
    fast = preset("fast-at")
    assert (fast["model"], fast["schedule"], fast["alpha"]) == ("preact-resnet18", "cyclic", 10 / 255)
    cfg = build_config({"epochs": 3, "model": "small-cnn"}, "pgd-at-he")
    assert (cfg.epochs, cfg.model, cfg.scale, cfg.preset) == (3, "small-cnn", 15.0, "pgd-at-he")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")


def test_framework_defaults_follow_spec():
    from heat_fast.training.config import TrainConfig
    fast = TrainConfig(framework="fast-at").resolved()
    assert (fast.schedule, fast.milestones, fast.steps) == ("cyclic", [], 1)
    assert fast.alpha == pytest.approx(1.25 * fast.eps)
    alp = TrainConfig(framework="alp", he=True).resolved()
    assert (alp.scale, alp.margin, alp.alp_weight) == (20.0, 0.3, 0.5)
    trades = TrainConfig(framework="trades").resolved()
    assert (trades.start, trades.beta, trades.scale) == ("normal", 6.0, 15.0)
    free = TrainConfig(framework="free-at").resolved()
    assert (free.scale, free.alpha, free.steps) == (10.0, free.eps, 4)
    assert TrainConfig(epochs=1).resolved().milestones == []  # no decay inside a 1-epoch run
    model = build_model("small-cnn", 10, True, 1, 8)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), [], "alp", progress=False)
    assert (trainer.framework.objective.scale, trainer.framework.objective.margin) == (20.0, 0.3)


def test_schedules():
    cyclic = lr_factor("cyclic", 2, 10)
    assert cyclic(0) == 0 and cyclic(10) == 1 and cyclic(5) == pytest.approx(0.5)
    assert cyclic(15) == pytest.approx(0.5)
    multi = lr_factor("multistep", 10, 4, [5, 8])
    assert [multi(i * 4) for i in (4, 5, 7, 8)] == pytest.approx([1, 0.1, 0.1, 0.01])


def test_checkpoint_roundtrip_and_errors(tmp_path, digits):
    data, x, _ = digits
    model = _model(data, True)
    config = {"model": "small-cnn", "num_classes": 10, "he": True, "in_channels": 1,
              "image_size": 8, "mean": list(data.mean), "std": list(data.std)}
    state = {"model": model.state_dict(), "optimizer": {}, "scheduler": {}, "epoch": 1,
             "rng": {}, "config": config}
    path = tmp_path / "last.pt"
    save_checkpoint(path, state)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind
    loaded, cfg = load_model(path)
    assert cfg == config and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path / "bad.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="missing key"):
        load_model(tmp_path / "other.pt")
    wrong = copy.deepcopy(state)
    wrong["config"]["model"] = "preact-resnet18"
    save_checkpoint(tmp_path / "wrong.pt", wrong)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "wrong.pt")
