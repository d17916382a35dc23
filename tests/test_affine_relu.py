"""The per-channel affine + ReLU (heat_fast.ops.affine_relu): the native CPU op against the
reference and against ``relu(bn(x))`` with an eval-mode BN, forward and backward, NCHW and
channels_last, every float dtype; when models take the fused path and when they must not."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import require_backend
from heat_fast import reference
from heat_fast.models import build_model
from heat_fast.models.wide_resnet import wide_resnet_body
from heat_fast.ops import BackendUnavailableError
from heat_fast.ops import affine_relu as affine_relu_module
from heat_fast.ops.affine_relu import affine_relu, batch_norm_affine, batch_norm_relu
from heat_fast.training.crafting import crafting, input_gradient
from isa_variants import assert_isa_variants_agree
from numerics import UNIT_ROUNDOFF, assert_error_ratio

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# odd sizes: channels shorter and longer than a vector, planes of one element and of many
SHAPES = [(3, 5, 7, 9), (2, 1, 4, 4), (1, 17, 1, 1), (4, 70, 3, 5), (2, 33, 16, 16)]


@pytest.fixture
def native_ops():
    require_backend("native")


@pytest.fixture
def fused_calls(monkeypatch):
    """The argument tuples of every native affine_relu call batch_norm_relu makes."""
    calls = []
    native_op = affine_relu_module._NativeAffineReLU

    class Recording:
        @staticmethod
        def apply(*args):
            calls.append(args)
            return native_op.apply(*args)

    monkeypatch.setattr(affine_relu_module, "_NativeAffineReLU", Recording)
    return calls


def _inputs(shape, dtype, seed, channels_last=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    math = torch.float64 if dtype == torch.float64 else torch.float32
    scale = (torch.rand(shape[1], generator=gen, dtype=torch.float64) * 2 - 0.5).to(math)
    shift = torch.randn(shape[1], generator=gen, dtype=torch.float64).to(math)
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, scale, shift


def _truth(x, scale, shift):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return torch.relu(x.double() * scale.double().view(shape) + shift.double().view(shape))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_native_matches_reference(native_ops, shape, dtype, channels_last):
    x, scale, shift = _inputs(shape, dtype, seed=sum(shape), channels_last=channels_last)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    results = {}
    for backend in ("native", "reference"):
        xi = x.clone().requires_grad_(True)
        y = affine_relu(xi, scale, shift, backend=backend)
        (dx,) = torch.autograd.grad(y, xi, grad)
        results[backend] = y, dx
    (y, dx), (y_ref, dx_ref) = results["native"], results["reference"]
    assert y.dtype == dtype and dx.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last
                           else torch.contiguous_format)
    assert_error_ratio(y, y_ref, _truth(x, scale, shift), what=f"y {dtype} {shape}")
    shape_c = (1, -1, 1, 1)
    dx_truth = torch.where(_truth(x, scale, shift) > 0, grad.double() * scale.double().view(shape_c),
                           torch.zeros((), dtype=torch.float64))
    # where x·scale + shift rounds to zero in one computation and not in the other, the ReLU
    # mask differs: both are right to the rounding of y, so those elements are left out
    agree = (y > 0) == (_truth(x, scale, shift) > 0)
    assert agree.float().mean() > 0.99
    assert_error_ratio(dx[agree], dx_ref[agree], dx_truth[agree], what=f"dx {dtype} {shape}")
    assert (y >= 0).all() and ((y > 0) | (dx == 0)).all()


def test_matches_eval_batch_norm_and_relu(native_ops, fused_calls):
    """relu(bn(x)) of an eval-mode BN with trained statistics, and its input gradient, under
    bf16 autocast on a channels_last batch as a crafting forward runs it."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(24)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.2, 3)
        bn.weight.uniform_(-1.5, 1.5), bn.bias.uniform_(-1, 1)
    bn.eval().requires_grad_(False)
    x = torch.randn(6, 24, 9, 11).contiguous(memory_format=torch.channels_last)
    for dtype in (torch.float32, torch.bfloat16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            xi = x.to(dtype).requires_grad_(True)
            fused = batch_norm_relu(bn, nn.ReLU(), xi)
            (d_fused,) = torch.autograd.grad(fused.float().square().sum(), xi)
            xr = x.to(dtype).requires_grad_(True)
            plain = torch.relu(bn(xr))
            (d_plain,) = torch.autograd.grad(plain.float().square().sum(), xr)
        assert fused.dtype == plain.dtype and fused.grad_fn is not None
        tol = 4 * UNIT_ROUNDOFF[dtype]
        torch.testing.assert_close(fused.float(), plain.float(), rtol=tol, atol=tol)
        torch.testing.assert_close(d_fused.float(), d_plain.float(), rtol=4 * tol, atol=4 * tol)
    assert len(fused_calls) == 2


def test_batch_norm_relu_keeps_the_modules_where_fusing_would_change_anything(native_ops,
                                                                              fused_calls):
    calls = fused_calls
    x = torch.randn(2, 4, 5, 5)
    bn, relu = nn.BatchNorm2d(4), nn.ReLU()
    batch_norm_relu(bn, relu, x)  # training mode: batch statistics
    assert not calls
    bn.eval()
    batch_norm_relu(bn, relu, x)  # trainable γ, β under grad mode: their gradients are needed
    assert not calls
    with torch.no_grad():
        torch.testing.assert_close(batch_norm_relu(bn, relu, x), relu(bn(x)))
    assert len(calls) == 1
    bn.requires_grad_(False)
    batch_norm_relu(bn, relu, x)
    assert len(calls) == 2
    handle = relu.register_forward_hook(lambda *args: None)
    batch_norm_relu(bn, relu, x)  # a hook must run
    handle.remove()
    batch_norm_relu(bn, nn.LeakyReLU(), x)
    assert len(calls) == 2


def test_trainable_scale_falls_back_to_the_reference_with_its_gradients(native_ops):
    x, scale, shift = _inputs((2, 6, 3, 3), torch.float32, seed=3)
    scale.requires_grad_(True)
    shift.requires_grad_(True)
    y = affine_relu(x, scale, shift, backend="native")
    d_scale, d_shift = torch.autograd.grad(y.sum(), (scale, shift))
    mask = (y > 0).double()
    torch.testing.assert_close(d_scale, (mask * x).sum((0, 2, 3)).float())
    torch.testing.assert_close(d_shift, mask.sum((0, 2, 3)).float())


def test_preact_and_wide_resnet_crafting_gradients_unchanged(native_ops, fused_calls,
                                                              monkeypatch):
    """A crafting input gradient through PreActResNet-18 and a WRN with the fused
    pre-activations equals the one through BN and ReLU as modules (float32: to rounding)."""
    for name in ("preact-resnet18", "wrn-10-2"):
        torch.manual_seed(1)
        model = (build_model(name, 10, he=True) if name.startswith("preact")
                 else nn.Sequential(wide_resnet_body(10, 2), nn.Linear(128, 10)))
        model.train()
        with torch.no_grad():  # running statistics of a few batches
            for _ in range(3):
                model(torch.rand(8, 3, 32, 32))
        x, y = torch.rand(5, 3, 32, 32), torch.randint(0, 10, (5,))

        def loss(batch):
            return F.cross_entropy(15.0 * model(batch), y)

        del fused_calls[:]
        with crafting(model):
            fused = input_gradient(loss, x)
            assert len(fused_calls) == sum(hasattr(m, "conv_bn_pairs") for m in model.modules())
            with monkeypatch.context() as m:
                m.setattr(affine_relu_module, "_fusable", lambda *args: False)
                plain = input_gradient(loss, x)
        assert model.training
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-6 * plain.abs().max().item())


def test_errors_name_the_argument(native_ops):
    x, scale, shift = _inputs((2, 3, 4, 4), torch.float32, seed=0)
    ops = torch.ops.heat_fast_C
    with pytest.raises(ValueError, match=r"scale must have shape \(3,\)"):
        ops.affine_relu(x, scale[:2], shift)
    with pytest.raises(TypeError, match="shift must be Float for x of BFloat16"):
        ops.affine_relu(x.bfloat16(), scale, shift.double())
    with pytest.raises(RuntimeError, match="x must be float32, float64, float16 or bfloat16"):
        ops.affine_relu(x.int(), scale, shift)
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, ...\)"):
        ops.affine_relu(x[0, 0, 0], scale[:1], shift[:1])
    with pytest.raises(ValueError, match="grad must have y's shape"):
        ops.affine_relu_backward(x[:1], x, scale)
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        affine_relu(x, scale, shift, backend="triton")


def test_native_backend_refuses_what_it_cannot_run(monkeypatch):
    x, scale, shift = _inputs((2, 3, 4, 4), torch.float32, seed=0)
    monkeypatch.setenv("HEAT_FAST_DISABLE_NATIVE", "1")
    with pytest.raises(BackendUnavailableError, match="HEAT_FAST_DISABLE_NATIVE"):
        affine_relu(x, scale, shift, backend="native")
    torch.testing.assert_close(affine_relu(x, scale, shift),
                               reference.affine_relu(x, scale, shift), rtol=0, atol=0)


def test_batch_norm_affine_is_the_eval_batch_norm():
    torch.manual_seed(2)
    for affine in (True, False):
        bn = nn.BatchNorm2d(5, affine=affine).eval()
        with torch.no_grad():
            bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
            if affine:
                bn.weight.normal_(), bn.bias.normal_()
        x = torch.randn(3, 5, 4, 4)
        scale, shift = batch_norm_affine(bn)
        torch.testing.assert_close(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), bn(x))


_VARIANT_SCRIPT = """
import torch
from heat_fast.ops.affine_relu import affine_relu
gen = torch.Generator().manual_seed(5)
out = []
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    for channels_last in (False, True):
        x = torch.randn(3, 37, 5, 7, generator=gen).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        scale, shift = torch.randn(37, generator=gen), torch.randn(37, generator=gen)
        x.requires_grad_(True)
        y = affine_relu(x, scale, shift, backend="native")
        g = torch.randn(y.shape, generator=gen).to(dtype)
        out.append((y.detach(), torch.autograd.grad(y, x, g)[0]))
"""


def test_instruction_set_variants_agree_bitwise(native_ops, tmp_path):
    """The baseline kernels (HEAT_FAST_CPU_ISA=baseline, a fresh process) and this process's
    widest ones give identical results: no FMA contraction in either."""
    assert_isa_variants_agree(_VARIANT_SCRIPT, tmp_path)
