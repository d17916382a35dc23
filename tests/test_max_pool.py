"""Max-pool with stride = kernel (heat_fast.ops.max_pool): the native CPU ops against torch's
max_pool2d (the reference), values and gradients bit for bit, with ties and NaN, every float
dtype, NCHW and channels_last, odd shapes; double backward; opcheck; torch.compile; errors."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import require_backend
from heat_fast import reference
from heat_fast.models.pooling import MaxPool
from heat_fast.ops import BackendUnavailableError
from heat_fast.ops.max_pool import max_pool2d
from isa_variants import assert_isa_variants_agree

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# (shape, kernel): remainder rows and columns, one window per plane, channels shorter and
# longer than a vector, NCHW rows of whole vectors of windows, the largest native kernel
CASES = [((2, 3, 8, 8), 2), ((3, 5, 7, 9), 2), ((1, 17, 2, 2), 2), ((2, 33, 9, 11), 3),
         ((2, 70, 10, 6), 5), ((1, 4, 5, 4), 1), ((2, 3, 4, 41), 2), ((1, 3, 17, 16), 16)]


@pytest.fixture
def native_ops():
    require_backend("native")


def _input(shape, dtype, seed, channels_last=False, ties=False):
    """Random x; with ``ties`` few distinct values, so most windows hold several maxima."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randint(0, 3, shape, generator=gen).float() if ties
         else torch.randn(shape, generator=gen))
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _pool_and_grad(x, kernel, grad, backend):
    xi = x.clone().requires_grad_(True)
    out = max_pool2d(xi, kernel, backend=backend)
    (dx,) = torch.autograd.grad(out, xi, grad)
    return out, dx


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kernel", CASES)
def test_native_equals_reference(native_ops, shape, kernel, dtype, channels_last, ties):
    """A maximum is exact and its gradient a copy: equal bit for bit, layout kept."""
    x = _input(shape, dtype, seed=sum(shape) + kernel, channels_last=channels_last, ties=ties)
    pooled = (shape[0], shape[1], shape[2] // kernel, shape[3] // kernel)
    grad = torch.randn(pooled, generator=torch.Generator().manual_seed(9)).to(dtype)
    out, dx = _pool_and_grad(x, kernel, grad, "native")
    out_ref, dx_ref = _pool_and_grad(x, kernel, grad, "reference")
    assert out.dtype == dtype and dx.dtype == dtype
    assert torch.equal(out, out_ref) and torch.equal(dx, dx_ref)
    layout = torch.channels_last if channels_last and shape[1] > 1 else torch.contiguous_format
    assert out.is_contiguous(memory_format=layout) and dx.is_contiguous(memory_format=layout)
    rows, cols = pooled[2] * kernel, pooled[3] * kernel
    assert (dx[:, :, rows:] == 0).all() and (dx[:, :, :, cols:] == 0).all()
    assert (dx != 0).sum() <= grad.numel()


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_wins_its_window_and_takes_the_gradient(native_ops, dtype):
    """As torch's max-pool: a window holding NaN pools to NaN, and its last NaN takes the
    gradient; other windows are unaffected (16 channels: whole vectors of windows)."""
    x = _input((2, 16, 6, 6), dtype, seed=4)
    x[0, 1, 0, 1] = x[0, 1, 1, 0] = float("nan")
    x[1, 5, 4, 4] = float("nan")
    for channels_last in (False, True):
        xl = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        grad = torch.randn(2, 16, 3, 3, generator=torch.Generator().manual_seed(1)).to(dtype)
        out, dx = _pool_and_grad(xl, 2, grad, "native")
        out_ref, dx_ref = _pool_and_grad(xl, 2, grad, "reference")
        assert torch.equal(out.isnan(), out_ref.isnan()) and out.isnan().sum() == 2
        assert torch.equal(out.nan_to_num(), out_ref.nan_to_num()) and torch.equal(dx, dx_ref)


def test_double_backward_matches_torch(native_ops):
    """The backward is differentiable in the output gradient, as nn.MaxPool2d's is."""
    gen = torch.Generator().manual_seed(0)
    for channels_last in (False, True):
        x = _input((2, 3, 9, 8), torch.float64, seed=2, channels_last=channels_last, ties=True)
        grad = torch.randn(2, 3, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
        weights = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        results = []
        for pool in (MaxPool(3), nn.MaxPool2d(3)):
            xi = x.clone().requires_grad_(True)
            (dx,) = torch.autograd.grad(pool(xi), xi, grad, create_graph=True)
            results.append(torch.autograd.grad((dx * weights).sum(), grad)[0])
        assert torch.equal(*results)
        torch.autograd.gradcheck(lambda g: _native_input_gradient(x, g), (grad,))


def _native_input_gradient(x, grad):
    xi = x.clone().requires_grad_(True)
    (dx,) = torch.autograd.grad(max_pool2d(xi, 3, backend="native"), xi, grad, create_graph=True)
    return dx


def test_ops_pass_opcheck(native_ops):
    ops = torch.ops.heat_fast_C
    for channels_last in (False, True):
        x = _input((2, 5, 7, 6), torch.float32, seed=3, channels_last=channels_last)
        out, argmax = ops.max_pool2d(x, 2)
        assert argmax.dtype == torch.uint8 and int(argmax.max()) < 4
        torch.library.opcheck(ops.max_pool2d, (x, 2))
        grad = torch.randn(out.shape).contiguous(memory_format=torch.channels_last
                                                 if channels_last else torch.contiguous_format)
        torch.library.opcheck(ops.max_pool2d_backward, (grad, argmax, 2, 7, 6, channels_last))


def test_compiled_model_equals_eager(native_ops):
    """torch.compile (fullgraph, torch.autograd.grad traced) of a conv → MaxPool → loss and
    its input gradient, as the compiled attack runs it (heat_fast.training.compiled): the
    native ops trace through their fakes and the result equals eager."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), MaxPool(2), nn.Flatten(),
                          nn.Linear(8 * 5 * 5, 4)).requires_grad_(False)
    y = torch.randint(0, 4, (6,))

    def input_grad(x):
        x = x.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(model(x), y), x)[0]

    x = torch.rand(6, 3, 11, 10)
    compiled = torch.compile(input_grad, fullgraph=True, backend="aot_eager")
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        got = compiled(x)
    torch.testing.assert_close(got, input_grad(x), rtol=1e-5, atol=1e-7)


def test_kernels_beyond_the_native_limit_use_the_reference(native_ops):
    x = _input((1, 2, 18, 17), torch.float32, seed=6)
    assert torch.equal(max_pool2d(x, 17), F.max_pool2d(x, 17))
    with pytest.raises(BackendUnavailableError, match="kernel_size ≤ 16, got 17"):
        max_pool2d(x, 17, backend="native")


def test_errors_name_the_argument(native_ops):
    x = _input((2, 3, 4, 4), torch.float32, seed=0)
    ops = torch.ops.heat_fast_C
    with pytest.raises(ValueError, match="kernel_size must be a positive int, got 0"):
        max_pool2d(x, 0)
    with pytest.raises(ValueError, match="kernel_size must be a positive int, got 2.0"):
        max_pool2d(x, 2.0)
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, H, W\) with H and W at least"):
        max_pool2d(x, 5)
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, H, W\)"):
        max_pool2d(x[0], 2)
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        max_pool2d(x, 2, backend="triton")
    with pytest.raises(ValueError, match=r"kernel must be in \[1, 16\], got 17"):
        ops.max_pool2d(x, 17)
    with pytest.raises(RuntimeError, match="x must be float32, float64, float16 or bfloat16"):
        ops.max_pool2d(x.int(), 2)
    out, argmax = ops.max_pool2d(x, 2)
    with pytest.raises(TypeError, match="argmax must be uint8"):
        ops.max_pool2d_backward(out, argmax.long(), 2, 4, 4, False)
    with pytest.raises(ValueError, match=r"argmax must have shape \(N, C, 3, 2\)"):
        ops.max_pool2d_backward(out, argmax, 2, 6, 4, False)
    with pytest.raises(ValueError, match="grad must have argmax's shape"):
        ops.max_pool2d_backward(out[:1], argmax, 2, 4, 4, False)


def test_native_backend_refuses_what_it_cannot_run(monkeypatch):
    x = _input((2, 3, 4, 4), torch.float32, seed=0)
    monkeypatch.setenv("HEAT_FAST_DISABLE_NATIVE", "1")
    with pytest.raises(BackendUnavailableError, match="HEAT_FAST_DISABLE_NATIVE"):
        max_pool2d(x, 2, backend="native")
    assert torch.equal(max_pool2d(x, 2), reference.max_pool2d(x, 2))


_VARIANT_SCRIPT = """
import torch
from heat_fast.ops.max_pool import max_pool2d
gen = torch.Generator().manual_seed(5)
out = []
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    for channels_last in (False, True):
        for kernel in (2, 3):
            x = torch.randn(3, 37, 13, 11, generator=gen).to(dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_(True)
            y = max_pool2d(x, kernel, backend="native")
            g = torch.randn(y.shape, generator=gen).to(dtype)
            out.append((y.detach(), torch.autograd.grad(y, x, g)[0]))
"""


def test_instruction_set_variants_agree_bitwise(native_ops, tmp_path):
    """The baseline kernels (HEAT_FAST_CPU_ISA=baseline, a fresh process) and this process's
    widest ones give identical results."""
    assert_isa_variants_agree(_VARIANT_SCRIPT, tmp_path)
