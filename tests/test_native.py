"""The native backend (heat_fast._C): its dispatcher ops, build metadata, fallback when it
cannot run, thread-count independence, and numerics against float64 ground truths.

The suites in test_he_loss.py and test_pgd.py also run over the native backend; this file
covers what is specific to it. Tests that need the extension skip when it is unavailable,
or fail when CI names "native" in HEAT_FAST_TEST_REQUIRE.
"""
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import heat_fast as hf
from conftest import require_backend
from heat_fast import native
from numerics import UNIT_ROUNDOFF, assert_error_ratio

CPU = torch.device("cpu")


@pytest.fixture
def ops():
    require_backend("native")
    return torch.ops.heat_fast_C


def he_inputs(batch, classes, dim, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(classes, dim, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randint(0, classes, (batch,), generator=gen)
    return x, w, y


def loss_and_grads(x, w, y, backend, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    loss = hf.he_cross_entropy(x, w, y, reduction="none", backend=backend, **kwargs)
    weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype)
    gx, gw = torch.autograd.grad((loss * weights).sum(), (x, w))
    return loss.detach(), gx, gw


def reduced_loss_and_grads(x, w, y, backend, reduction="mean", **kwargs):
    """The loss reduced inside the op (for native: the one pass, he_loss.h) and its
    gradients for an incoming gradient of exactly 1."""
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    loss = hf.he_cross_entropy(x, w, y, reduction=reduction, backend=backend, **kwargs)
    return (loss.detach(), *torch.autograd.grad(loss, (x, w)))


def image_batch(shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=gen)
    x_adv = (x_nat + 0.05 * (2 * torch.rand(shape, generator=gen) - 1)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen)
    return x_adv.to(dtype), grad.to(dtype), x_nat.to(dtype)


BOX = (torch.tensor(0.0), torch.tensor(1.0))  # the clip box as the ops take it: 0-d budgets


def rows(budget, like):
    """A (B,) per-sample budget as the ops take it: (B, 1, ..., 1), broadcasting to like."""
    return budget.reshape((-1,) + (1,) * (like.dim() - 1))


def budgets(batch, eps=0.05, alpha=0.01):
    return torch.full((batch,), eps), torch.full((batch,), alpha)


# ---- dispatcher registrations -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", [(0.0, True, True), (0.1, False, True), (0.0, True, False)])
def test_opcheck_he_ops(ops, dtype, options):
    smoothing, feature_norm, weight_norm = options
    x, w, y = he_inputs(5, 7, 9, dtype, seed=1)
    args = (x, w, y, 15.0, 0.2, smoothing, feature_norm, weight_norm)
    torch.library.opcheck(ops.he_ce_forward.default, args)  # a kernel op: not differentiable
    for reduction in native.REDUCTIONS.values():
        torch.library.opcheck(ops.he_cross_entropy.default,
                              (x.clone().requires_grad_(True), w.clone().requires_grad_(True),
                               *args[2:], reduction))
    _, grad_cos, x_norms, w_norms = ops.he_ce_forward(*args)
    grad_rows = torch.linspace(0.5, 1.5, 5, dtype=dtype)
    torch.library.opcheck(ops.he_ce_backward.default,
                          (grad_rows, x, w, grad_cos, x_norms, w_norms, feature_norm, weight_norm))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_opcheck_pgd_ops(ops, dtype, norm):
    x_adv, grad, x_nat = image_batch((3, 2, 5), dtype, seed=2)
    eps, alpha = budgets(3)
    for delta in (False, True):
        torch.library.opcheck(ops.pgd_step_.default,
                              (torch.empty_like(x_adv), x_adv, grad, x_nat, rows(eps, x_adv),
                               rows(alpha, x_adv), *BOX, norm, delta))
    torch.library.opcheck(ops.random_init_.default,
                          (torch.empty_like(x_nat), x_nat, rows(eps, x_nat), *BOX, torch.tensor(7),
                           norm))


def test_direct_op_is_differentiable(ops):
    """heat_fast_C::he_cross_entropy carries its own (C++) autograd: same gradients as the
    public function, float64 gradcheck for every reduction, and torch.compile(fullgraph=True)."""
    x, w, y = he_inputs(6, 5, 7, torch.float64, seed=11)
    x.requires_grad_(True)
    w.requires_grad_(True)

    def rows(a, b, reduction="none"):
        return native.he_cross_entropy(a, b, y, 8.0, 0.3, 0.1, True, True, reduction)

    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(lambda a, b: rows(a, b, reduction), (x, w))
    direct = torch.autograd.grad(rows(x, w).sum(), (x, w))
    public = torch.autograd.grad(
        hf.he_cross_entropy(x, w, y, 8.0, 0.3, "sum", 0.1, backend="native"), (x, w))
    for a, b in zip(direct, public):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: rows(a, b).sum(), fullgraph=True)
    torch.testing.assert_close(torch.autograd.grad(compiled(x, w), (x, w)), direct)
    compiled_mean = torch.compile(lambda a, b: rows(a, b, "mean"), fullgraph=True)
    torch.testing.assert_close(torch.autograd.grad(compiled_mean(x, w), (x, w)),
                               tuple(g / x.shape[0] for g in direct))


def test_kernel_errors_name_the_argument(ops):
    x, w, y = he_inputs(4, 3, 5)
    with pytest.raises(ValueError, match=r"target holds label 3, expected labels in \[0, 3\)"):
        ops.he_ce_forward(x, w, torch.tensor([0, 1, 2, 3]), 15.0, 0.2, 0.0, True, True)
    with pytest.raises(RuntimeError, match="weight"):
        ops.he_ce_forward(x, w[:, :4], y, 15.0, 0.2, 0.0, True, True)
    with pytest.raises(RuntimeError, match="target"):
        ops.he_ce_forward(x, w, y.int(), 15.0, 0.2, 0.0, True, True)
    x_adv, grad, x_nat = image_batch((3, 4))
    eps, alpha = budgets(3)
    with pytest.raises(ValueError, match="norm"):
        ops.pgd_step_(torch.empty_like(x_adv), x_adv, grad, x_nat, rows(eps, x_adv),
                      rows(alpha, x_adv), *BOX, "l1", False)
    with pytest.raises(ValueError, match="alpha"):
        ops.pgd_step_(torch.empty_like(x_adv), x_adv, grad, x_nat, rows(eps, x_adv),
                      rows(alpha[:2], x_adv), *BOX, "linf", False)
    with pytest.raises(ValueError, match="seed"):
        ops.random_init_(torch.empty_like(x_nat), x_nat, rows(eps, x_nat), *BOX,
                         torch.tensor([1]), "linf")


EMPTY_BATCH_CALLS = """
import torch
import heat_fast
from heat_fast import native
native.unavailable_reason(torch.device("cpu"), torch.float32)
x, w = torch.empty(0, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
y = torch.empty(0, dtype=torch.long)
C, H = torch.ops.heat_fast_C, torch.ops.heat_fast
calls = [lambda r=r: C.he_cross_entropy(x, w, y, 15.0, 0.2, 0.0, True, True, r) for r in (0, 1, 2)]
calls += [lambda: C.he_ce_forward(x, w, y, 15.0, 0.2, 0.0, True, True),
          lambda: C.cos_ce_forward(torch.empty(0, 3), y, 15.0, 0.2, 0.0)]
calls += [lambda b=b: H.he_ce_forward(x, w, y, 15.0, 0.2, 0.0, True, True, b)
          for b in ("reference", "triton", "native")]
calls += [lambda b=b: H.cos_ce_forward(torch.empty(0, 3), y, 15.0, 0.2, 0.0, b)
          for b in ("reference", "triton", "native")]
for call in calls:
    try:
        call()
    except (RuntimeError, ValueError) as error:
        assert "B >= 1" in str(error), error
    else:
        raise AssertionError("an empty batch was accepted")
print("refused", len(calls))
"""


def test_registered_ops_refuse_an_empty_batch(ops):
    """B = 0 with a weight that requires grad once crashed heat_fast_C::he_cross_entropy (a
    null source in std::copy); every registered op checks B >= 1 itself. In a subprocess, so
    a crash fails this test instead of ending the run."""
    done = subprocess.run([sys.executable, "-c", EMPTY_BATCH_CALLS], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TRITON_INTERPRET="1"))
    assert done.returncode == 0 and done.stdout.strip() == "refused 11", done.stderr[-2000:]


# ---- build metadata and availability --------------------------------------------------------


def test_cpu_isa_names_the_variant_and_rejects_unknown_caps(ops):
    assert native.cpu_isa() in ("baseline", "avx2", "avx512")
    script = "import heat_fast.native as n; n.cpu_isa()"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, HEAT_FAST_CPU_ISA="sse9"), timeout=120)
    assert done.returncode != 0
    assert "HEAT_FAST_CPU_ISA must be baseline, avx2 or avx512, got 'sse9'" in done.stderr


def test_build_info(ops):
    info = native.BUILD_INFO
    for key in ("torch", "cuda", "compiler", "with_cuda"):
        assert key in info, key
    assert info["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(info["with_cuda"], bool) and info["compiler"]
    if not info["with_cuda"]:
        assert info["cuda"] is None
        assert "without CUDA" in native.unavailable_reason(torch.device("cuda"), torch.float32)
    from heat_fast import _C

    assert _C.build_info()["torch"] == torch.__version__.split("+")[0]


def test_disabled_by_environment(monkeypatch):
    x, w, y = he_inputs(3, 4, 5)
    monkeypatch.setenv(native.DISABLE_ENV, "1")
    with pytest.raises(hf.BackendUnavailableError, match=native.DISABLE_ENV):
        hf.he_cross_entropy(x, w, y, backend="native")
    with pytest.raises(hf.BackendUnavailableError, match=native.DISABLE_ENV):
        hf.pgd_step(*image_batch((2, 3)), 0.1, 0.01, backend="native")
    assert hf.resolve_backend("auto", CPU, torch.float32) == "reference"
    torch.testing.assert_close(hf.he_cross_entropy(x, w, y),
                               hf.he_cross_entropy(x, w, y, backend="reference"))


@pytest.fixture
def fresh_loader(monkeypatch):
    """Lets a test change what the loader sees; the real state is restored afterwards."""
    native._load.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    native._load.cache_clear()


def test_not_built_is_silent_and_refused_with_the_rebuild_command(fresh_loader):
    fresh_loader.setattr(native, "_recorded_build_info", lambda: {})
    fresh_loader.setattr(native.importlib, "import_module",
                         _import_failing(ModuleNotFoundError("No module named 'heat_fast._C'",
                                                             name="heat_fast._C")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reason = native.unavailable_reason(CPU, torch.float32)
        assert "not built" in reason and native.REBUILD in reason
        assert native.BUILD_INFO == {}
        assert hf.resolve_backend("auto", CPU, torch.float32) == "reference"
    with pytest.raises(hf.BackendUnavailableError, match="not built"):
        hf.he_cross_entropy(*he_inputs(2, 3, 4), backend="native")


def test_mismatched_build_warns_once_and_falls_back(fresh_loader):
    built = {"torch": "2.0.0+cu118", "cuda": "11.8", "compiler": "gcc 9", "with_cuda": True}
    fresh_loader.setattr(native, "_recorded_build_info", lambda: dict(built))
    with pytest.warns(RuntimeWarning, match="built for torch 2.0.0") as caught:
        reasons = [native.unavailable_reason(CPU, torch.float32) for _ in range(3)]
        assert hf.resolve_backend("auto", CPU, torch.float32) == "reference"
    assert len([w for w in caught if "heat_fast" in str(w.message)]) == 1
    assert reasons[0] == reasons[2]
    assert "CUDA 11.8" in reasons[0] and torch.__version__ in reasons[0]
    assert native.REBUILD in reasons[0]
    with pytest.raises(hf.BackendUnavailableError, match="rebuild"):
        hf.he_cross_entropy(*he_inputs(2, 3, 4), backend="native")
    assert native.BUILD_INFO["torch"] == "2.0.0+cu118"


def test_load_failure_is_reported_with_versions(fresh_loader):
    fresh_loader.setattr(native, "_recorded_build_info",
                         lambda: {"torch": torch.__version__, "cuda": torch.version.cuda})
    fresh_loader.setattr(native.importlib, "import_module",
                         _import_failing(ImportError("undefined symbol: _ZN3c10foo")))
    with pytest.warns(RuntimeWarning, match="undefined symbol"):
        reason = native.unavailable_reason(CPU, torch.float32)
    assert "failed" in reason and native.REBUILD in reason


def _import_failing(error):
    real = native.importlib.import_module

    def import_module(name, *args):
        if name == "heat_fast._C":
            raise error
        return real(name, *args)

    return import_module


# ---- thread-count independence ----------------------------------------------------------------


def _native_outputs(ops):
    outputs = []
    for batch, classes, dim in [(256, 1000, 512), (128, 10, 640), (33, 7, 2049), (1, 2, 3)]:
        x, w, y = he_inputs(batch, classes, dim, seed=batch)
        forward = ops.he_ce_forward(x, w, y, 15.0, 0.2, 0.1, True, True)
        grad_rows = torch.linspace(0.5, 1.5, batch)
        outputs += list(forward)
        outputs += list(ops.he_ce_backward(grad_rows, x, w, *forward[1:], True, True))
    for batch, classes, dim in [(128, 10, 640), (1000, 7, 65)]:  # one pass (mean): 2 and 8 blocks
        x, w, y = he_inputs(batch, classes, dim, seed=dim)
        x.requires_grad_(True)
        w.requires_grad_(True)
        loss = hf.he_cross_entropy(x, w, y, backend="native")
        outputs += [loss.detach(), *torch.autograd.grad(loss, (x, w))]
    # Batch 3: the L2 step takes whole samples per task on 1 thread, parallel chunks on 2.
    for shape in ((4, 3, 128, 128), (3, 3, 150, 150)):
        x_adv, grad, x_nat = image_batch(shape, seed=3)
        eps, alpha = budgets(shape[0])
        for norm in ("linf", "l2"):
            out = torch.empty_like(x_adv)
            ops.pgd_step_(out, x_adv, grad, x_nat, rows(eps, x_adv), rows(alpha, x_adv), *BOX,
                          norm, False)
            start = torch.empty_like(x_nat)
            ops.random_init_(start, x_nat, rows(eps, x_nat), *BOX, torch.tensor(11), norm)
            outputs += [out, start]
    return outputs


def test_results_do_not_depend_on_thread_count(ops):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _native_outputs(ops)
        torch.set_num_threads(2)
        double = _native_outputs(ops)
    finally:
        torch.set_num_threads(threads)
    for i, (a, b) in enumerate(zip(single, double)):
        assert torch.equal(a, b), f"output {i} differs between 1 and 2 threads"


# ---- HE loss numerics -------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    dict(scale=15.0, margin=0.2),
    dict(scale=4.0, margin=0.0, label_smoothing=0.1),
    dict(scale=8.0, margin=0.3, feature_norm=False),
    dict(scale=8.0, margin=0.3, weight_norm=False),
])
@pytest.mark.parametrize("batch,classes,dim",  # D = 37: whole vectors and a tail (small_gemm.h)
                         [(1, 2, 3), (3, 5, 7), (6, 5, 37)])
def test_gradcheck(ops, batch, classes, dim, options):
    x, w, y = he_inputs(batch, classes, dim, torch.float64, seed=4)
    x.requires_grad_(True)
    w.requires_grad_(True)

    def loss(a, b):
        return hf.he_cross_entropy(a, b, y, reduction="none", backend="native", **options)

    assert torch.autograd.gradcheck(loss, (x, w))


@pytest.mark.parametrize("batch,classes,dim",  # the last one is a "large product" (tasks.h)
                         [(1, 2, 1), (1, 2, 3), (17, 1000, 33), (128, 10, 640), (300, 1000, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference_error(ops, dtype, batch, classes, dim):
    """Both paths compute in float32 from the same rounded inputs, so native's error against
    the float64 truth is at most twice the reference's plus a few output ulps."""
    x, w, y = he_inputs(batch, classes, dim, dtype, seed=5)
    truth = loss_and_grads(x.double(), w.double(), y, "reference", scale=15.0, margin=0.2)
    ref = loss_and_grads(x, w, y, "reference", scale=15.0, margin=0.2)
    fast = loss_and_grads(x, w, y, "native", scale=15.0, margin=0.2)
    for name, f, r, t in zip(("loss", "d_features", "d_weight"), fast, ref, truth):
        # The loss is float32 whatever the input dtype; its floor is float32 rounding of s·cos.
        floor = 64 * UNIT_ROUNDOFF[torch.float32] * 15.0 if name == "loss" else None
        assert_error_ratio(f, r, t, floor=floor, what=f"native {name} {dtype}")


@pytest.mark.parametrize("batch,classes,dim",  # small products form the feature norms in the
                         [(1, 2, 1), (7, 3, 33), (9, 13, 131), (300, 1000, 64)])  # GEMM's pass
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_norms_are_the_row_norms(ops, dtype, batch, classes, dim):
    """The forward's feature and weight norms: sums of D positive squares, each serial sum at
    most a few hundred terms long, so within 32 ulps of the float64 norms."""
    x, w, y = he_inputs(batch, classes, dim, dtype, seed=dim)
    _, _, x_norms, w_norms = ops.he_ce_forward(x, w, y, 15.0, 0.2, 0.0, True, True)
    rtol = 32 * UNIT_ROUNDOFF[dtype]
    torch.testing.assert_close(x_norms.double(), x.double().norm(dim=1), rtol=rtol, atol=0)
    torch.testing.assert_close(w_norms.double(), w.double().norm(dim=1), rtol=rtol, atol=0)


# A mean or a sum with gradients on plain CPU tensors runs forward and backward in one pass
# (csrc/cpu/he_loss.h); up to 16 blocks of rows (B <= 2048 here), larger batches run the two ops.
ONE_PASS_SHAPES = [(1, 2, 1), (7, 10, 33), (128, 10, 640), (1000, 10, 40), (2100, 3, 8)]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("batch,classes,dim", ONE_PASS_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reduced_loss_matches_reference_error(ops, dtype, batch, classes, dim, reduction):
    x, w, y = he_inputs(batch, classes, dim, dtype, seed=batch)
    results = {name: reduced_loss_and_grads(a, b, y, backend, reduction)
               for name, backend, (a, b) in (("truth", "reference", (x.double(), w.double())),
                                             ("ref", "reference", (x, w)),
                                             ("fast", "native", (x, w)))}
    for i, what in enumerate(("loss", "d_features", "d_weight")):
        floor = 64 * UNIT_ROUNDOFF[torch.float32] * 15.0 * batch if what == "loss" else None
        assert_error_ratio(results["fast"][i], results["ref"][i], results["truth"][i], floor=floor,
                           what=f"native {reduction} {what} {dtype} B{batch} C{classes} D{dim}")


@pytest.mark.parametrize("batch", [128, 1000])
def test_one_pass_gradients_equal_the_two_ops(ops, batch):
    """The one pass folds the normalization backward of the features into its product and
    d_weight sums the row blocks' shares, so both only round differently from the backward op:
    each is within a few float32 ulps of max |gradient| of the truth (the error-ratio tests),
    so they differ by less than 16 ulps of it."""
    x, w, y = he_inputs(batch, 10, 40, seed=11)
    grads = {}
    for path in ("one pass", "two ops"):
        a, b = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        if path == "one pass":
            loss = hf.he_cross_entropy(a, b, y, backend="native")
        else:  # per-row losses: the forward op, then the backward op with grad_rows = 1/B
            loss = hf.he_cross_entropy(a, b, y, reduction="none", backend="native").mean()
        grads[path] = (loss.detach(), *torch.autograd.grad(loss, (a, b)))
    (l1, f1, w1), (l2, f2, w2) = grads["one pass"], grads["two ops"]
    ulp = UNIT_ROUNDOFF[torch.float32]
    assert torch.allclose(l1, l2, rtol=1e-6, atol=0)
    assert not torch.equal(f1, f2)  # the fused form is what runs
    assert (f1 - f2).abs().max() <= 16 * ulp * f2.abs().max()
    assert (w1 - w2).abs().max() <= 16 * ulp * w2.abs().max()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_one_pass_zero_feature_rows(ops, reduction):
    """Rows with ‖x‖ <= 1e-12 are normalized as x / 1e-12 (F.normalize), a linear map whose
    gradient the one pass must not project."""
    x, w, y = he_inputs(9, 6, 33, seed=14)
    x[2] = 0.0
    x[5] = 1e-14
    results = {name: reduced_loss_and_grads(a, b, y, backend, reduction)
               for name, backend, (a, b) in (("truth", "reference", (x.double(), w.double())),
                                             ("ref", "reference", (x, w)),
                                             ("fast", "native", (x, w)))}
    for i, what in enumerate(("loss", "d_features", "d_weight")):
        assert_error_ratio(results["fast"][i], results["ref"][i], results["truth"][i],
                           what=f"native {reduction} {what}")
    assert results["fast"][1][5].abs().max() > 1e9  # g / 1e-12, unprojected


def test_one_pass_forms_only_the_gradients_asked_for(ops):
    x, w, y = he_inputs(64, 10, 40, seed=12)
    features = x.clone().requires_grad_(True)
    loss = hf.he_cross_entropy(features, w, y, reduction="sum", backend="native")
    (d_features,) = torch.autograd.grad(2.5 * loss, (features,))  # an incoming gradient of 2.5
    a, b = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss = hf.he_cross_entropy(a, b, y, reduction="sum", backend="native")
    expected, _ = torch.autograd.grad(2.5 * loss, (a, b))
    assert torch.equal(d_features, expected)
    with torch.no_grad():
        plain = hf.he_cross_entropy(features, w, y, reduction="sum", backend="native")
    assert plain.grad_fn is None and torch.equal(plain, loss.detach())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_one_pass(ops, reduction):
    x, w, y = he_inputs(6, 5, 37, torch.float64, seed=13)
    x.requires_grad_(True)
    w.requires_grad_(True)

    def loss(a, b):
        return hf.he_cross_entropy(a, b, y, 8.0, 0.3, reduction, 0.1, backend="native")

    assert torch.autograd.gradcheck(loss, (x, w))


def confident_inputs(batch, classes, dim, seed=6):
    """Features aligned with their class weight: s = 64, m = 0.35 gives p_y ≈ 1."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, dim, generator=gen, dtype=torch.float64)
    y = torch.arange(batch) % classes
    x = 3.0 * F.normalize(w[y], dim=1) + 0.02 * torch.randn(batch, dim, generator=gen,
                                                            dtype=torch.float64)
    return x, w, y


def stable_truth(x, w, y, scale, margin):
    """Float64 loss rows and gradients in the log1p form, accurate when p_y → 1."""
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()
    z = scale * (cos - margin * F.one_hot(y, w.shape[0]))
    others = (z - z.gather(1, y[:, None])).masked_fill(F.one_hot(y, w.shape[0]).bool(), -torch.inf)
    loss = torch.log1p(others.exp().sum(1))
    weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype)  # as loss_and_grads
    gx, gw = torch.autograd.grad((loss * weights).sum(), (x, w))
    return loss.detach(), gx, gw


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_confident_logits_stay_accurate(ops, dtype):
    x, w, y = confident_inputs(64, 10, 128)
    x, w = x.to(dtype), w.to(dtype)
    loss, gx, gw = stable_truth(x.double(), w.double(), y, 64.0, 0.35)
    assert (loss < 1e-6).all() and (loss > 0).all(), "the case must be confident"
    fast = loss_and_grads(x, w, y, "native", scale=64.0, margin=0.35)
    # float32 cosines are exact to ~2⁻²⁴; × s = 64 that is a relative error of ~1e-5 on
    # e^{z_j − z_y}, whatever the input dtype (inputs are rounded before the truth is taken).
    rel_loss = ((fast[0].double() - loss).abs() / loss).max().item()
    assert rel_loss < 1e-3, rel_loss
    for name, f, t in (("d_features", fast[1], gx), ("d_weight", fast[2], gw)):
        rel = ((f.double() - t).norm() / t.norm()).item()
        assert rel < 4 * UNIT_ROUNDOFF[dtype] + 1e-4, f"{name}: relative error {rel:.2e}"
    _, grad_cos, _, _ = ops.he_ce_forward(x, w, y, 64.0, 0.35, 0.0, True, True)
    true_class = grad_cos.gather(1, y[:, None]).squeeze(1).double()
    expected = -64.0 * (-torch.expm1(-loss))  # s·(p_y − 1) with p_y = e^{−loss}
    assert ((true_class - expected).abs() / expected.abs()).max() < 1e-3


# ---- projected step and random start -----------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (2, 3, 131, 67)])
def test_step_in_place_equals_out_of_place(ops, norm, shape):
    x_adv, grad, x_nat = image_batch(shape, seed=7)
    grad.view(-1)[::13] = float("nan")
    separate = hf.pgd_step(x_adv, grad, x_nat, 0.03, 0.01, norm, backend="native")
    in_place = x_adv.clone()
    returned = hf.pgd_step(in_place, grad, x_nat, 0.03, 0.01, norm, out=in_place, backend="native")
    assert returned is in_place
    assert torch.equal(in_place, separate)
    assert torch.isfinite(separate).all()


def test_empty_samples(ops):
    x_adv, grad, x_nat = (torch.empty(2, 0) for _ in range(3))
    eps, alpha = budgets(2)
    for norm in ("linf", "l2"):
        out = torch.empty(2, 0)
        ops.pgd_step_(out, x_adv, grad, x_nat, rows(eps, x_adv), rows(alpha, x_adv), *BOX, norm,
                      False)
        ops.random_init_(out, x_nat, rows(eps, x_nat), *BOX, torch.tensor(1), norm)


def test_linf_step_is_bitwise_the_reference(ops):
    x_adv, grad, x_nat = image_batch((8, 3, 32, 32), seed=8)
    grad.view(-1)[::7] = 0.0
    grad.view(-1)[::11] = float("nan")
    eps, alpha = 0.01 + 0.05 * torch.rand(8), 0.005 + 0.01 * torch.rand(8)
    fast = hf.pgd_step(x_adv, grad, x_nat, eps, alpha, backend="native")
    ref = hf.pgd_step(x_adv, grad, x_nat, eps, alpha, backend="reference")
    assert torch.equal(fast, ref)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_dtypes_step_in_float32(ops, norm, dtype):
    """A float32 gradient for half-precision images is used in float32, as the reference does."""
    x_adv, grad, x_nat = image_batch((4, 3, 9, 9), dtype, seed=9)
    grad = torch.randn(grad.shape) * 1e-9  # below float16's range: the sign must survive
    fast = hf.pgd_step(x_adv, grad, x_nat, 0.05, 0.01, norm, backend="native")
    ref = hf.pgd_step(x_adv, grad, x_nat, 0.05, 0.01, norm, backend="reference")
    assert fast.dtype == dtype
    torch.testing.assert_close(fast.float(), ref.float(), rtol=0, atol=2 * UNIT_ROUNDOFF[dtype])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_init_is_a_function_of_the_seed(ops, norm):
    _, _, x_nat = image_batch((3, 3, 50, 50), seed=10)
    eps = torch.tensor([0.1, 0.2, 0.3])

    def start(seed):
        out = torch.empty_like(x_nat)
        ops.random_init_(out, x_nat, rows(eps, x_nat), torch.tensor(float("-inf")),
                         torch.tensor(float("inf")), torch.tensor(seed), norm)
        return out

    first, again, other = start(5), start(5), start(6)
    assert torch.equal(first, again) and not torch.equal(first, other)
    delta = (first - x_nat).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-6)).all()
    if norm == "linf":
        assert (size > 0.95 * eps).all()


# ---- instruction-set variants --------------------------------------------------------------

_VARIANT_SCRIPT = """
import sys
import torch
import heat_fast as hf
from heat_fast import native
sys.path.insert(0, {tests!r})
from test_native import (SHAPES_BY_ISA, budgets, he_inputs, image_batch, loss_and_grads,
                         reduced_loss_and_grads)
results = {{"he": [], "pgd": []}}
for batch, classes, dim in SHAPES_BY_ISA:
    x, w, y = he_inputs(batch, classes, dim, seed=dim)
    for dtype in (torch.float32, torch.float64):
        for run in (loss_and_grads, reduced_loss_and_grads):
            results["he"].append(run(x.to(dtype), w.to(dtype), y, "native",
                                     scale=15.0, margin=0.2))
x_adv, grad, x_nat = image_batch((3, 3, 17, 19), seed=2)
eps, alpha = budgets(3)
for norm in ("linf", "l2"):
    results["pgd"].append(hf.pgd_step(x_adv, grad, x_nat, eps, alpha, norm=norm, backend="native"))
results["isa"] = native.cpu_isa()
torch.save(results, {path!r})
"""

# Odd sizes: whole vectors, tiles and their remainders, tails shorter than a vector.
SHAPES_BY_ISA = [(1, 2, 1), (7, 10, 33), (17, 1000, 33), (9, 13, 131), (128, 10, 640)]


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_narrower_instruction_sets(ops, isa, tmp_path):
    """Each CPU kernel variant, capped by HEAT_FAST_CPU_ISA in a fresh process (a machine runs
    only its widest one by default): the HE loss within the error bound of the float32/64
    reference, the projected step bit-identical to this process's (its variants round alike)."""
    path = tmp_path / "results.pt"
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, HEAT_FAST_CPU_ISA=isa)
    script = _VARIANT_SCRIPT.format(tests=tests, path=str(path))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
    results = torch.load(path)
    widths = ["baseline", "avx2", "avx512"]
    assert results["isa"] == widths[min(widths.index(isa), widths.index(native.cpu_isa()))]
    he_results = iter(results["he"])
    for batch, classes, dim in SHAPES_BY_ISA:
        x, w, y = he_inputs(batch, classes, dim, seed=dim)
        for dtype in (torch.float32, torch.float64):
            for run in (loss_and_grads, reduced_loss_and_grads):  # two ops, then the one pass
                truth = run(x.double(), w.double(), y, "reference", scale=15.0, margin=0.2)
                ref = run(x.to(dtype), w.to(dtype), y, "reference", scale=15.0, margin=0.2)
                fast = next(he_results)
                for name, f, r, t in zip(("loss", "d_features", "d_weight"), fast, ref, truth):
                    floor = 64 * UNIT_ROUNDOFF[dtype] * 15.0 if name == "loss" else None
                    assert_error_ratio(f, r, t, floor=floor, what=f"{isa} {run.__name__} "
                                       f"{name} {dtype} B{batch} C{classes} D{dim}")
    x_adv, grad, x_nat = image_batch((3, 3, 17, 19), seed=2)
    eps, alpha = budgets(3)
    for norm, stepped in zip(("linf", "l2"), results["pgd"]):
        here = hf.pgd_step(x_adv, grad, x_nat, eps, alpha, norm=norm, backend="native")
        assert torch.equal(stepped, here), f"{isa} pgd_step {norm} differs from this process's"
