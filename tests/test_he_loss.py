"""he_cross_entropy / he_logits: every fast backend against the reference (SPEC §2.1)."""
import pytest
import torch
import torch.nn.functional as F

import heat_fast as hf
from heat_fast.ops.he_loss import he_ce_forward_op
from numerics import assert_error_ratio

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def make_inputs(batch, classes, dim, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen).to(dtype)
    w = torch.randn(classes, dim, generator=gen).to(dtype)
    y = torch.randint(0, classes, (batch,), generator=gen)
    return x, w, y


def loss_and_grads(x, w, y, backend, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    loss = hf.he_cross_entropy(x, w, y, backend=backend, **kwargs)
    weights = torch.linspace(0.5, 1.5, loss.numel(), device=loss.device).reshape(loss.shape)
    gx, gw = torch.autograd.grad((loss * weights).sum(), (x, w))
    return loss.detach(), gx, gw


def check_against_reference(x, w, y, backend, **kwargs):
    truth = loss_and_grads(x.double(), w.double(), y, "reference", **kwargs)
    ref = loss_and_grads(x, w, y, "reference", **kwargs)
    fast = loss_and_grads(x, w, y, backend, **kwargs)
    assert fast[0].dtype == torch.float32
    assert fast[1].dtype == x.dtype and fast[2].dtype == w.dtype
    for name, f, r, t in zip(("loss", "d_features", "d_weight"), fast, ref, truth):
        assert torch.isfinite(f).all(), name
        assert_error_ratio(f, r, t, what=f"{backend} {name} {x.dtype} {tuple(x.shape)}x{tuple(w.shape)}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,classes,dim", [(1, 2, 1), (7, 10, 33), (16, 100, 64), (5, 1000, 17)])
def test_matches_reference_on_odd_shapes(fast_backend, dtype, batch, classes, dim):
    x, w, y = make_inputs(batch, classes, dim, dtype)
    check_against_reference(x, w, y, fast_backend, scale=15.0, margin=0.2)


@pytest.mark.parametrize("scale", [1.0, 15.0, 64.0])
@pytest.mark.parametrize("margin", [0.0, 0.2, 0.35])
def test_matches_reference_over_scale_and_margin(fast_backend, scale, margin):
    x, w, y = make_inputs(9, 10, 20, seed=1)
    check_against_reference(x, w, y, fast_backend, scale=scale, margin=margin)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_reductions_and_label_smoothing(fast_backend, reduction, label_smoothing):
    x, w, y = make_inputs(6, 7, 12, seed=2)
    check_against_reference(x, w, y, fast_backend, reduction=reduction,
                            label_smoothing=label_smoothing)


@pytest.mark.parametrize("feature_norm,weight_norm", [(False, True), (True, False), (False, False)])
def test_normalization_switches(fast_backend, feature_norm, weight_norm):
    x, w, y = make_inputs(6, 5, 9, seed=3)
    check_against_reference(x, w, y, fast_backend, scale=2.0, feature_norm=feature_norm,
                            weight_norm=weight_norm)


def test_non_contiguous_inputs(fast_backend):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(11, 40, generator=gen)[:, ::2]
    w = torch.randn(20, 13, generator=gen).t()
    y = torch.randint(0, 13, (22,), generator=gen)[::2]
    assert not x.is_contiguous() and not w.is_contiguous() and not y.is_contiguous()
    check_against_reference(x, w, y, fast_backend)


def test_mixed_autocast_dtypes(fast_backend):
    x, w, y = make_inputs(8, 10, 16, seed=5)
    check_against_reference(x.to(torch.bfloat16), w, y, fast_backend)


def test_confident_logits_keep_true_class_gradient(fast_backend):
    """p_y ≈ 1: loss and the true-class gradient must not cancel (relative accuracy)."""
    classes, dim = 10, 32
    gen = torch.Generator().manual_seed(6)
    w = F.normalize(torch.randn(classes, dim, generator=gen), dim=1)
    y = torch.arange(classes)
    x = w + 0.05 * torch.randn(classes, dim, generator=gen)
    args = (y, 30.0, 0.1, 0.0, True, True)
    loss, grad_cos, _, _ = he_ce_forward_op(x, w, *args, fast_backend)
    truth_loss, truth_grad, _, _ = he_ce_forward_op(x.double(), w.double(), *args, fast_backend)
    ref_rows = hf.he_cross_entropy(x.double(), w.double(), y, 30.0, 0.1, reduction="none",
                                   backend="reference")
    assert (ref_rows < 1e-4).all(), "the case must be confident"
    # Triton passes Python floats as float32 scalars, so s·m is exact to ~1e-8 only.
    assert torch.allclose(truth_loss, ref_rows, rtol=1e-6, atol=0)
    true_grad = grad_cos[y, y].double()
    truth_true = truth_grad[y, y]
    assert (truth_true.abs() > 0).all()
    assert ((true_grad - truth_true).abs() / truth_true.abs()).max() < 1e-4
    assert ((loss.double() - ref_rows).abs() / ref_rows).max() < 1e-4


def test_gradcheck_reference():
    x, w, y = make_inputs(3, 4, 5, torch.float64, seed=7)
    x.requires_grad_(True)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: hf.he_cross_entropy(a, b, y, 15.0, 0.2, label_smoothing=0.1, backend="reference"),
        (x, w))


@pytest.mark.parametrize("feature_norm,weight_norm", [(True, True), (False, False)])
def test_gradcheck_fast(fast_backend, feature_norm, weight_norm):
    x, w, y = make_inputs(3, 4, 5, torch.float64, seed=8)
    x.requires_grad_(True)
    w.requires_grad_(True)

    def loss(a, b):
        return hf.he_cross_entropy(a, b, y, 4.0, 0.25, "none", 0.1, feature_norm, weight_norm,
                                   backend=fast_backend)

    assert torch.autograd.gradcheck(loss, (x, w))


def test_opcheck(fast_backend):
    for dtype in (torch.float32, torch.float64):
        x, w, y = make_inputs(5, 6, 7, dtype, seed=9)
        x.requires_grad_(True)
        w.requires_grad_(True)
        torch.library.opcheck(he_ce_forward_op, (x, w, y, 15.0, 0.2, 0.1, True, True, fast_backend))


def test_torch_compile_fullgraph_matches_eager(fast_backend):
    torch._dynamo.reset()
    x, w, y = make_inputs(8, 10, 16, seed=10)
    backbone = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU())

    def step(inputs):
        return hf.he_cross_entropy(backbone(inputs), w, y, backend=fast_backend)

    eager = step(x)
    compiled = torch.compile(step, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_he_logits_semantics():
    x, w, y = make_inputs(4, 3, 6, seed=11)
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()
    torch.testing.assert_close(hf.he_logits(x, w), cos)
    expected = 10.0 * (cos - 0.3 * F.one_hot(y, 3))
    torch.testing.assert_close(hf.he_logits(x, w, 10.0, 0.3, y), expected)
    assert hf.he_logits(x, w).abs().max() <= 1.0 + 1e-6


def test_modules():
    x, w, y = make_inputs(4, 3, 6, seed=12)
    head = hf.HELinear(6, 3, scale=2.0)
    with torch.no_grad():
        head.weight.copy_(w)
    torch.testing.assert_close(head(x), hf.he_logits(x, w, 2.0))
    assert head.weight.requires_grad and not hasattr(head, "bias")
    criterion = hf.HECrossEntropyLoss(scale=10.0, margin=0.3, backend="reference")
    torch.testing.assert_close(criterion(x, w, y), hf.he_cross_entropy(x, w, y, 10.0, 0.3))


@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_bad_inputs_name_the_argument(backend):
    from conftest import require_backend

    require_backend(backend)
    x, w, y = make_inputs(4, 3, 6, seed=13)
    cases = [
        ((x, w[:, :5], y), {}, "weight"),
        ((x, w, y[:3]), {}, "target"),
        ((x, w, y + 3), {}, r"target holds label \d+, expected labels in \[0, 3\)"),
        ((x, w, y - 5), {}, r"target holds label -\d+, expected labels in \[0, 3\)"),
        ((x, w, y.float()), {}, "target"),
        ((x.long(), w, y), {}, "features"),
        ((x[0], w, y), {}, "features"),
        ((x, w[:1], y[:4].clamp(max=0)), {}, "C >= 2"),
        ((x, w, y), {"reduction": "avg"}, "reduction"),
        ((x, w, y), {"scale": -1.0}, "scale"),
        ((x, w, y), {"margin": -0.1}, "margin"),
        ((x, w.to("meta"), y), {}, "device"),
    ]
    for args, kwargs, needle in cases:
        with pytest.raises((ValueError, TypeError), match=needle):
            hf.he_cross_entropy(*args, backend=backend, **kwargs)
    with pytest.raises(ValueError, match="target is required"):
        hf.he_logits(x, w, margin=0.2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_split_d_matches_reference(monkeypatch, dtype):
    """The GPU tile plans split D across programs (partials summed in a fixed order); force
    the split under the interpreter by asking for more programs than the shape has tiles."""
    from conftest import require_backend
    from heat_fast.triton_kernels import common, he_loss

    require_backend("triton")
    monkeypatch.setattr(common, "target_programs", lambda device: 12)
    x, w, y = make_inputs(20, 37, 100, dtype, seed=14)
    assert he_loss.forward_plan(20, 37, 100, torch.float32, False, 12).splits > 1
    check_against_reference(x, w, y, "triton", scale=30.0, margin=0.3, label_smoothing=0.1)


@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_autocast_region_keeps_float32_math(backend):
    """Inside torch.autocast (which wraps the forward pass and the loss, as torch advises)
    the op's inner products must not drop to bfloat16; its fused backward neither when run
    inside the region."""
    from conftest import require_backend

    require_backend(backend)
    x, w, y = make_inputs(64, 300, 96, seed=15)
    x.requires_grad_(True)
    w.requires_grad_(True)
    loss = hf.he_cross_entropy(x, w, y, 30.0, 0.2, backend=backend)
    expected = (loss.detach(), *torch.autograd.grad(loss, (x, w)))
    with torch.autocast("cpu", torch.bfloat16):
        loss = hf.he_cross_entropy(x, w, y, 30.0, 0.2, backend=backend)
        inside = backend != "reference" and torch.autograd.grad(loss, (x, w), retain_graph=True)
    got = (loss.detach(), *torch.autograd.grad(loss, (x, w)))
    for name, g, e in zip(("loss", "d_features", "d_weight"), got, expected):
        assert g.dtype == e.dtype, name
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7, msg=f"{backend} {name}")
    for name, g, e in zip(("d_features", "d_weight"), inside or (), expected[1:]):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7, msg=f"{backend} {name} inside")


@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_target_given_as_a_list_is_a_clear_error(backend):
    from conftest import require_backend

    require_backend(backend)
    x, w, _ = make_inputs(4, 3, 6, seed=16)
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        hf.he_cross_entropy(x, w, [0, 1, 2, 0], backend=backend)
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        hf.cos_margin_cross_entropy(torch.rand(4, 3), [0, 1, 2, 0], backend=backend)
