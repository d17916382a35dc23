"""cos_margin_cross_entropy: the HE loss on cosines a model already formed, every backend
against the float64 reference, and the label-smoothing convention of Bag of Tricks."""
import pytest
import torch
import torch.nn.functional as F

import heat_fast as hf
from conftest import require_backend
from heat_fast.ops.cos_loss import cos_ce_forward_op
from numerics import assert_error_ratio

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def cosines(batch, classes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cos = (2 * torch.rand(batch, classes, generator=gen) - 1).to(dtype)
    return cos, torch.randint(0, classes, (batch,), generator=gen)


def loss_and_grad(cos, y, backend, **kwargs):
    cos = cos.detach().clone().requires_grad_(True)
    loss = hf.cos_margin_cross_entropy(cos, y, backend=backend, **kwargs)
    weights = torch.linspace(0.5, 1.5, loss.numel(), device=loss.device).reshape(loss.shape)
    (grad,) = torch.autograd.grad((loss * weights).sum(), (cos,))
    return loss.detach(), grad


def check(cos, y, backend, **kwargs):
    truth = loss_and_grad(cos.double(), y, "reference", **kwargs)
    ref = loss_and_grad(cos, y, "reference", **kwargs)
    fast = loss_and_grad(cos, y, backend, **kwargs)
    assert fast[0].dtype == torch.float32 and fast[1].dtype == cos.dtype
    for name, f, r, t in zip(("loss", "d_cos"), fast, ref, truth):
        assert torch.isfinite(f).all(), name
        assert_error_ratio(f, r, t, what=f"{backend} {name} {cos.dtype} {tuple(cos.shape)}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,classes", [(1, 2), (7, 10), (5, 1000), (33, 257)])
def test_matches_reference(fast_backend, dtype, batch, classes):
    cos, y = cosines(batch, classes, dtype)
    check(cos, y, fast_backend, scale=15.0, margin=0.2)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_reductions_smoothing_scale_margin(fast_backend, reduction, label_smoothing):
    cos, y = cosines(9, 13, seed=1)
    for scale, margin in ((1.0, 0.0), (30.0, 0.35), (64.0, 0.5)):
        check(cos, y, fast_backend, scale=scale, margin=margin, reduction=reduction,
              label_smoothing=label_smoothing)


def test_definition_and_non_contiguous_input(fast_backend):
    cos, y = cosines(12, 8, seed=2)
    logits = 10.0 * (cos - 0.3 * F.one_hot(y, 8))
    expected = F.cross_entropy(logits, y, label_smoothing=0.05)
    got = hf.cos_margin_cross_entropy(cos, y, 10.0, 0.3, label_smoothing=0.05,
                                      backend=fast_backend)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    wide = torch.cat([cos, cos], dim=1)[:, ::2]
    assert not wide.is_contiguous()
    check(wide, y, fast_backend)


def test_confident_cosines_keep_the_true_class_gradient(fast_backend):
    classes = 10
    y = torch.arange(classes)
    cos = torch.full((classes, classes), -0.5)
    cos[y, y] = 0.99
    args = (y, 30.0, 0.1, 0.0)
    _, grad = cos_ce_forward_op(cos, *args, fast_backend)
    _, truth = cos_ce_forward_op(cos.double(), *args, fast_backend)
    assert (truth[y, y].abs() > 0).all()
    assert ((grad[y, y].double() - truth[y, y]).abs() / truth[y, y].abs()).max() < 1e-4


def test_bag_of_tricks_label_smoothing_mapping():
    """Target 1 − ε_o and ε_o/(C − 1) for each other class (Bag of Tricks for AT), written
    from that description, equals torch's convention with ε = ε_o·C/(C − 1)."""
    cos, y = cosines(16, 10, seed=3)
    logits = 15.0 * (cos - 0.2 * F.one_hot(y, 10))
    smoothing = 0.1
    weights = torch.full_like(logits, smoothing / 9).scatter_(1, y[:, None], 1 - smoothing)
    oracle = (-weights * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    mapped = hf.smoothing_from_other_classes(smoothing, 10)
    torch.testing.assert_close(hf.cos_margin_cross_entropy(cos, y, 15.0, 0.2,
                                                           label_smoothing=mapped), oracle)


def test_gradcheck_and_opcheck(fast_backend):
    cos, y = cosines(4, 6, torch.float64, seed=4)
    cos.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda c: hf.cos_margin_cross_entropy(c, y, 4.0, 0.25, "none", 0.1,
                                              backend=fast_backend), (cos,))
    torch.library.opcheck(cos_ce_forward_op, (cos, y, 15.0, 0.2, 0.1, fast_backend))


def test_torch_compile_fullgraph(fast_backend):
    torch._dynamo.reset()
    cos, y = cosines(8, 10, seed=5)
    head = torch.nn.Linear(10, 10)

    def step(c):
        return hf.cos_margin_cross_entropy(torch.tanh(head(c)), y, backend=fast_backend)

    torch.testing.assert_close(torch.compile(step, fullgraph=True)(cos), step(cos))


@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_module_and_bad_inputs(backend):
    require_backend(backend)
    cos, y = cosines(4, 5, seed=6)
    criterion = hf.CosineMarginLoss(10.0, 0.3, backend=backend)
    torch.testing.assert_close(criterion(cos, y),
                               hf.cos_margin_cross_entropy(cos, y, 10.0, 0.3, backend="reference"))
    cases = [
        ((cos[0], y), {}, ValueError, "cos must have shape"),
        ((cos[:, :1], y), {}, ValueError, "C >= 2"),
        ((cos, y[:3]), {}, ValueError, "target"),
        ((cos, y + 5), {}, ValueError, "label"),
        ((cos, y), {"scale": "15"}, TypeError, "scale must be a real number"),
        ((cos, y), {"scale": float("inf")}, ValueError, "scale must be > 0 and finite"),
        ((cos, y), {"margin": float("inf")}, ValueError, "margin"),
        ((cos.long(), y), {}, TypeError, "cos"),
    ]
    for args, kwargs, error, needle in cases:
        with pytest.raises(error, match=needle):
            hf.cos_margin_cross_entropy(*args, backend=backend, **kwargs)
