"""The fast AT step: bf16 / channels_last defaults, float32 where it matters, no wasted passes,
frozen weights while crafting, the compiled (and CUDA-graph) attack, process hygiene."""
import statistics
import subprocess
import sys
import textwrap

import pytest
import torch

import heat_fast.training.crafting as crafting
import heat_fast.training.objective as objective_module
from heat_fast import pgd_step
from heat_fast.data import TensorLoader, load_dataset
from heat_fast.models import build_model
from heat_fast.training import Objective, Trainer, TrainConfig, build_framework, pgd_attack
from heat_fast.training import precision
from heat_fast.training.compiled import CompiledAttack
from heat_fast.training.folding import CraftingConv
from heat_fast.training.evaluate import evaluate_pgd

EPS = 0.1


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    idx = torch.randperm(data.train_x.shape[0], generator=torch.Generator().manual_seed(0))[:64]
    return data, data.train_x[idx], data.train_y[idx]


def _model(data, he=True, seed=0):
    torch.manual_seed(seed)
    return build_model("small-cnn", 10, he, 1, 8, data.mean, data.std)


def _images(batch=8, channels=3, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, channels, size, size, generator=gen),
            torch.randint(0, 10, (batch,), generator=gen))


# --- where bf16 and channels_last pay -----------------------------------------------------

def _fake_cpu(monkeypatch, tmp_path, cpuinfo_flags, torch_flags, onednn=True):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {' '.join(cpuinfo_flags)}\n")
    monkeypatch.setattr(precision, "CPUINFO", str(cpuinfo))
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {f: True for f in torch_flags})
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: onednn)


@pytest.mark.parametrize("cpuinfo_flags,torch_flags,onednn,bf16,channels_last", [
    (["avx2", "avx512f", "avx512_bf16"], [], True, True, True),
    (["avx2", "amx_tile", "amx_bf16"], [], True, True, True),
    ([], ["avx512_bf16"], True, True, True),              # torch's capabilities are enough
    (["avx2", "avx512f"], ["avx512f"], True, False, True),  # no bf16: emulated; oneDNN NHWC
    ([], ["avx2"], True, False, True),
    (["avx2"], ["avx2"], False, False, False),            # no oneDNN: no NHWC kernels known
    ([], [], True, False, False),                         # no AVX2 (e.g. an Arm CPU)
])
def test_fast_path_on_cpu_follows_native_bf16_and_onednn(monkeypatch, tmp_path, cpuinfo_flags,
                                                         torch_flags, onednn, bf16,
                                                         channels_last):
    _fake_cpu(monkeypatch, tmp_path, cpuinfo_flags, torch_flags, onednn)
    path = precision.fast_path("cpu")
    assert (path.bf16, path.channels_last) == (bf16, channels_last)
    assert ("bf16" in path.reason) and (bf16 == ("neither" not in path.reason))
    assert channels_last == ("channels_last" in path.reason or bf16)
    assert precision.resolve("cpu", False, None) == precision.FastPath(False, channels_last,
                                                                      path.reason)
    assert precision.resolve("cpu", None, True).channels_last is True
    assert precision.resolve("cpu", None, False) == precision.FastPath(bf16, False, path.reason)
    described = precision.describe("cpu", True, True)
    assert described.startswith("bf16 autocast, channels_last")
    assert ("default here" in described) and (("as asked" in described) != bf16)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_fast_path_on_cuda_follows_native_bf16(monkeypatch, native_bf16):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: asked.append(including_emulation) or native_bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    path = precision.fast_path("cuda:0")
    assert (path.bf16, path.channels_last) == (native_bf16, native_bf16) and asked == [False]
    assert precision.fast_path("mps") == precision.FastPath(False, False, "no fast path known for mps")


def test_config_and_trainer_fill_the_device_default(monkeypatch, tmp_path, digits):
    for flags, on, nhwc in ((["avx512_bf16"], True, True), (["avx2"], False, True),
                            ([], False, False)):
        _fake_cpu(monkeypatch, tmp_path, flags, [])
        cfg = TrainConfig(device="cpu").resolved()
        assert (cfg.bf16, cfg.channels_last, cfg.compile) == (on, nhwc, False)
        assert TrainConfig(device="cpu", bf16=False, channels_last=False).resolved().bf16 is False
        data, x, y = digits
        model = _model(data)
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), [], progress=False)
        assert trainer.framework.objective.bf16 is on and trainer.channels_last is nhwc
        assert trainer.fast_path == precision.fast_path("cpu")


# --- float32 where it matters ------------------------------------------------------------

def test_bf16_attack_gradients_stay_float32_and_the_he_loss_gets_float32_features(digits, monkeypatch):
    data, x, y = digits
    model = _model(data).eval()
    seen = []
    real = objective_module.he_cross_entropy
    monkeypatch.setattr(objective_module, "he_cross_entropy",
                        lambda f, w, *a, **k: seen.append((f.dtype, w.dtype)) or real(f, w, *a, **k))
    conv_dtypes = []
    model.body[0][0].register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))
    grads = {}
    for bf16 in (False, True):
        obj = Objective(True, 15.0, 0.2, bf16=bf16)
        grads[bf16] = crafting.input_gradient(lambda xa: obj.craft_loss(model, xa, y), x)
        assert obj.forward(model, x).features.dtype == torch.float32
    assert conv_dtypes == [torch.float32, torch.float32, torch.bfloat16, torch.bfloat16]
    assert seen == [(torch.float32, torch.float32)] * 2
    g32, g16 = grads[False], grads[True]
    assert g16.dtype == torch.float32
    # no underflow: bf16 leaves as few zero entries as float32 does, with the same signs
    assert (g16 == 0).float().mean() <= (g32 == 0).float().mean() + 0.01
    big = g32.abs() > 0.05 * g32.abs().max()
    assert (g16.sign() == g32.sign())[big].float().mean() > 0.95


def test_bf16_training_matches_fp32_within_seed_noise_on_digits():
    """PGD-AT + HE on digits, 3 seeds each: bf16 + channels_last reaches the accuracy of
    float32 within the spread that the seeds themselves give (3 standard errors + 2 points)."""
    data = load_dataset("digits")
    accuracy = {False: [], True: []}
    for bf16 in (False, True):
        for seed in range(3):
            model = _model(data, seed=seed)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
            loader = TensorLoader(data.train_x, data.train_y, 64,
                                  generator=torch.Generator().manual_seed(seed))
            trainer = Trainer(model, optimizer, loader, "pgd-at", eps=EPS, steps=3, bf16=bf16,
                              channels_last=bf16, progress=False, seed=seed)
            trainer.fit(4)
            result = evaluate_pgd(model, data.test_x, data.test_y, Objective(True), EPS, EPS / 4,
                                  5, generator=torch.Generator().manual_seed(0))
            accuracy[bf16].append((result["clean_acc"], result["pgd_acc"]))
    for metric in (0, 1):
        fp32, bf16 = ([a[metric] for a in accuracy[k]] for k in (False, True))
        assert min(fp32) > (0.9 if metric == 0 else 0.6)  # it learned: the comparison means something
        noise = 3 * ((statistics.variance(fp32) + statistics.variance(bf16)) / 3) ** 0.5 + 0.02
        assert abs(statistics.mean(bf16) - statistics.mean(fp32)) <= noise, accuracy


# --- no wasted passes --------------------------------------------------------------------

def _count_forwards(model):
    calls = []
    model.body.register_forward_hook(lambda m, i, o: calls.append(m.training))
    return calls


@pytest.mark.parametrize("name,own_clean_forward", [
    ("pgd-at", False), ("fast-at", False), ("free-at", False), ("alp", True), ("trades", True)])
def test_clean_accuracy_costs_no_forward_unless_asked(digits, name, own_clean_forward):
    data, x, y = digits
    counts = {}
    for measure in (False, True):
        model = _model(data)
        calls = _count_forwards(model)
        steps = {} if name == "fast-at" else {"steps": 2}
        framework = build_framework(name, Objective(True), eps=EPS,
                                    generator=torch.Generator().manual_seed(0), **steps)
        stats = framework.train_step(model, torch.optim.SGD(model.parameters(), lr=0.01), x, y,
                                     measure_clean=measure)
        counts[measure] = len(calls)
        expect_clean = own_clean_forward or measure
        assert stats.clean_count == (x.shape[0] if expect_clean else 0)
        assert 0 <= int(stats.clean_correct) <= stats.clean_count
    assert counts[True] - counts[False] == (0 if own_clean_forward else 1)


def test_trainer_measures_clean_accuracy_every_k_batches(digits):
    data, x, y = digits
    model = _model(data)
    loader = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]  # 8 batches
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), loader, "pgd-at",
                      eps=EPS, steps=1, progress=False, clean_acc_every=3)
    seen = []
    real = trainer.framework.train_step
    trainer.framework.train_step = lambda *a, measure_clean: (seen.append(measure_clean),
                                                              real(*a, measure_clean=measure_clean))[1]
    stats = trainer.train_epoch()
    assert seen == [True, False, False, True, False, False, True, False]
    assert 0 <= stats["train_clean_acc"] <= 1
    with pytest.raises(ValueError, match="clean_acc_every"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), loader, clean_acc_every=0)


def test_crafting_freezes_parameters_and_restores_them_even_on_errors(digits):
    data, x, y = digits
    model = _model(data)
    model.body[0][1].weight.requires_grad_(False)  # a user-frozen BN scale stays frozen
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    obj = Objective(True)
    seen = []

    def loss_fn(xa):
        seen.append(any(p.requires_grad for p in model.parameters()))
        return obj.craft_loss(model, xa, y)

    x_adv = pgd_attack(model, x, loss_fn, EPS, 0.03, 3, generator=torch.Generator().manual_seed(0))
    assert seen == [False] * 3 and all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert (x_adv - x).abs().max() <= EPS + 1e-6

    def failing(xa):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        pgd_attack(model, x, failing, EPS, 0.03, 2)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert model.training


# --- channels_last batches stay channels_last --------------------------------------------

@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_channels_last_steps_keep_the_layout_and_the_values(norm):
    x, _ = _images()
    gen = torch.Generator().manual_seed(1)
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    grad = torch.randn(x.shape, generator=gen)
    expected = pgd_step(x_adv, grad, x, 0.1, 0.02, norm=norm)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x_adv, grad, x)]
    got = crafting.project(*cl, 0.1, 0.02, norm=norm)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    for start in crafting.STARTS:
        first = crafting.start_point(cl[2], 0.1, start, torch.Generator().manual_seed(0), norm)
        assert first.is_contiguous(memory_format=torch.channels_last)
        assert (first - x).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1).max() <= 0.1 + 1e-5


# --- the compiled attack ----------------------------------------------------------------

def _attack_setup(data, bf16=False):
    model = _model(data).eval()
    framework = build_framework("pgd-at", Objective(True, 15.0, 0.2, bf16=bf16, compile=True),
                                eps=EPS, alpha=EPS / 4, steps=4)
    return model, framework


def test_compiled_attack_step_equals_eager_within_float_tolerance(digits):
    """One compiled step (forward, input gradient and projection in one fullgraph graph, so
    without host synchronisation) gives eager's iterate, except where eager's gradient is
    within float32 rounding of zero and its sign is a coin flip; K steps then agree on all
    but a few elements, all within the ε-ball."""
    data, x, y = digits
    model, framework = _attack_setup(data)
    start = crafting.start_point(x, EPS, "uniform", torch.Generator().manual_seed(0))
    compiled = CompiledAttack(framework._craft_step)
    with crafting.crafting(model):
        eager_next = framework._craft_step(model, start, x, y)
        compiled_next = compiled(model, start, x, y, 1)
        grad = crafting.input_gradient(lambda xa: framework.craft_loss(model, xa, y), start)
        eager_k = start
        for _ in range(framework.steps):
            eager_k = framework._craft_step(model, eager_k, x, y)
        compiled_k = compiled(model, start, x, y, framework.steps)
    differ = (eager_next - compiled_next).abs() > 1e-6
    assert (grad.abs()[differ] <= 1e-5 * grad.abs().max()).all()
    assert differ.float().mean() < 1e-3
    assert ((eager_k - compiled_k).abs() > 1e-6).float().mean() < 1e-2
    assert (compiled_k - x).abs().max() <= EPS + 1e-6
    assert all(p.requires_grad for p in model.parameters())  # thawed again


def test_compiled_training_step_matches_eager(digits):
    data, x, y = digits
    results = []
    for compile_ in (False, True):
        model = _model(data)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        framework = build_framework("pgd-at", Objective(True, compile=compile_), eps=EPS,
                                    steps=2, start="none")
        stats = framework.train_step(model, optimizer, x, y)
        results.append((stats.loss, [p.detach().clone() for p in model.parameters()]))
    (loss_e, params_e), (loss_c, params_c) = results
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-5)
    for p_c, p_e in zip(params_c, params_e):
        torch.testing.assert_close(p_c, p_e, rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_attack_replays_the_eager_attack_without_host_syncs(digits):
    data, x, y = digits
    model, framework = _attack_setup(data)
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    compiled = CompiledAttack(framework._craft_step)
    with crafting.crafting(model):
        for seed in range(3):  # capture on the first batch, replay on the next ones
            start = crafting.start_point(x, EPS, "uniform", torch.Generator("cuda").manual_seed(seed))
            eager = start
            for _ in range(framework.steps):
                eager = framework._craft_step(model, eager, x, y)
            torch.cuda.set_sync_debug_mode("error" if seed else "default")
            try:
                replayed = compiled(model, start, x, y, framework.steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            assert ((replayed - eager).abs() > 1e-5).float().mean() < 1e-2
    assert len(compiled._graphs) == 1


# --- process hygiene ---------------------------------------------------------------------

def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, check=True).stdout


def test_importing_the_cli_and_training_loads_no_compiler_triton_or_matplotlib():
    """What costs import time beyond torch's own (dynamo ~0.9 s, matplotlib ~0.3 s, triton
    ~0.2 s) is imported where it is used, not by the CLI, training or evaluation modules."""
    out = _python("""
        import sys
        import heat_fast.cli, heat_fast.cli.train, heat_fast.cli.eval, heat_fast.training
        import heat_fast.evaluation
        heavy = ("torch._dynamo", "torch._inductor", "triton", "matplotlib")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m.startswith(heavy)))
    """)
    assert out.strip() == "[]"


def test_native_marks_constants_as_torch_compiler_does():
    from heat_fast import native

    def probe():
        return None

    torch.compiler.assume_constant_result(probe)
    assert vars(probe) == {"_dynamo_marked_constant": True}
    for fn in (native.unavailable_reason, native._load_failure):
        assert fn._dynamo_marked_constant is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_malloc_tuning_stops_refaulting_freed_activations():
    """A 64 MiB activation allocated, touched and freed ten times: glibc's default maps it
    afresh each time (a minor fault per page); tuned, the heap keeps and reuses it (after
    the first two rounds have grown the heap)."""
    out = _python("""
        import resource, torch
        from heat_fast.training.allocator import keep_freed_memory

        def faults():
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(10):
                torch.ones(16 << 20)
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

        default = faults()
        print(keep_freed_memory(), default, faults())
    """)
    tuned_ok, default, tuned = out.split()
    assert tuned_ok == "True"
    assert int(default) > 0 and int(tuned) <= int(default) / 3


# --- BatchNorm folded into the convolutions while crafting ------------------------------

@pytest.mark.parametrize("name,folds,kept", [
    ("small-cnn", 3, 0),          # conv-BN(-ReLU) Sequentials
    ("resnet18", 20, 0),          # stem, two per residual branch, three shortcuts
    ("preact-resnet18", 8, 9),    # conv1 → bn2 of each block; pre-activation BNs stay
])
def test_folded_batchnorm_gives_the_same_input_gradients_and_restores_the_model(name, folds, kept):
    torch.manual_seed(0)
    model = build_model(name, 10, True, 3, 16)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.3, 0.3)
    x, y = _images()
    obj = Objective(True)
    modules = list(model.named_modules())
    grads = {}
    for fold in (False, True):
        with crafting.crafting(model, eval_mode=True) if fold else crafting.crafting_mode(model):
            if fold:
                kinds = [type(m).__name__ for m in model.modules()]
                assert (kinds.count("CraftingConv"), kinds.count("BatchNorm2d")) == (folds, kept)
            grads[fold] = crafting.input_gradient(lambda xa: obj.craft_loss(model, xa, y), x)
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-4, atol=1e-4 * grads[False].abs().max())
    assert list(model.named_modules()) == modules and model.training

    def failing(xa):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        pgd_attack(model, x, failing, EPS, 0.03, 1)
    assert list(model.named_modules()) == modules


def test_hooked_or_training_batchnorm_is_not_folded(digits):
    data, x, y = digits
    model = _model(data)
    seen = []
    model.body[0][1].register_forward_hook(lambda m, i, o: seen.append(1))
    with crafting.crafting(model, eval_mode=True):
        model(x)
        folded = [type(m).__name__ for m in model.modules()].count("CraftingConv")
    assert seen == [1] and folded == 2  # the hooked stage runs as written, the others fold
    with crafting.crafting(model, eval_mode=False):  # BN on batch statistics
        assert "CraftingConv" not in [type(m).__name__ for m in model.modules()]


# --- the CLI prints and records the settings ---------------------------------------------

@pytest.mark.parametrize("flags,bf16,channels_last", [
    ([], None, None), (["--fp32", "--no-channels-last"], False, False), (["--bf16"], True, None)])
def test_cli_prints_and_records_precision_and_layout(tmp_path, capsys, flags, bf16, channels_last):
    import json

    from heat_fast.cli.train import main

    auto = precision.fast_path("cpu")
    bf16 = auto.bf16 if bf16 is None else bf16
    channels_last = auto.channels_last if channels_last is None else channels_last
    out = tmp_path / "run"
    argv = ["--dataset", "digits", "--epochs", "1", "--max-steps-per-epoch", "1", "--steps", "1",
            "--eval-examples", "8", "--eval-steps", "1", "--no-progress", "--device", "cpu",
            "--out", str(out), *flags]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"speed: {precision.describe('cpu', bf16, channels_last)}, compile off" in printed
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert (record["precision"], record["channels_last"], record["compile"]) == (
        "bf16" if bf16 else "float32", channels_last, False)
    config = torch.load(out / "last.pt", weights_only=True)["config"]
    assert (config["bf16"], config["channels_last"], config["compile"]) == (bf16, channels_last, False)


def test_bf16_crafting_convolutions_hold_the_weights_autocast_would_cast():
    """Weights cast to bf16 once per attack give exactly the values autocast casts at every
    call: with BN on batch statistics (nothing folds) the input gradients are bitwise equal."""
    torch.manual_seed(0)
    model = build_model("preact-resnet18", 10, True, 3, 16).train()
    x, y = _images()
    obj = Objective(True, bf16=True)
    grads = []
    for dtype in (None, torch.bfloat16):
        with crafting.crafting(model, eval_mode=False, dtype=dtype):
            convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, CraftingConv))]
            assert all(isinstance(m, CraftingConv) == (dtype is not None) for m in convs)
            grads.append(crafting.input_gradient(lambda xa: obj.craft_loss(model, xa, y), x))
    assert torch.equal(grads[0], grads[1]) and grads[1].dtype == torch.float32
