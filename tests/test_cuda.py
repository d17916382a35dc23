"""The CUDA suite: every backend on CUDA tensors against the float64 truth, plus what only a
GPU shows (streams, CUDA graphs, device-side asserts, several GPUs).

Run it on a GPU machine with the Triton interpreter off (else the Triton backend on CUDA
tensors would be the interpreter, and triton 3.6's interpreter fails with numpy >= 2.4):

    TRITON_INTERPRET=0 HEAT_FAST_TEST_REQUIRE=cuda python -m pytest tests/test_cuda.py

Without CUDA every test skips; HEAT_FAST_TEST_REQUIRE=cuda turns those skips into failures.
``HEAT_FAST_CUDA_SUITE_DEVICE=cpu`` runs the device-independent tests on CPU tensors instead
(Triton through its interpreter, small shapes): the GPU check script's dry run uses it so CI
exercises this file's own code. gpu/check.sh runs the suite.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import heat_fast as hf
from heat_fast.ops import dispatch
from heat_fast.ops.he_loss import he_ce_forward_op
from heat_fast.ops.pgd import pgd_step_op
from test_he_loss import check_against_reference, loss_and_grads
from test_he_loss_chunked import check_against_reference as check_chunked_against_reference
from test_pgd import assert_step_matches

DEVICE = torch.device(os.environ.get("HEAT_FAST_CUDA_SUITE_DEVICE", "cuda"))
ON_GPU = DEVICE.type == "cuda"
BACKENDS = ("reference", "triton", "native")
FAST = ("triton", "native")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (B, C, D): B = 1, C = 2, odd sizes, the CIFAR and ImageNet heads, many classes.
HE_SHAPES = ([(1, 2, 1), (7, 10, 33), (5, 1000, 17), (128, 10, 640), (256, 1000, 2048),
              (3, 40000, 64)] if ON_GPU else [(1, 2, 1), (7, 10, 33), (5, 100, 17)])
PGD_SHAPES = ([(1, 1), (3, 5), (128, 3, 32, 32), (8, 3, 224, 224)] if ON_GPU
              else [(1, 1), (3, 5), (2, 3, 7, 7)])


def _required() -> bool:
    return "cuda" in os.environ.get("HEAT_FAST_TEST_REQUIRE", "").split(",")


def _skip_or_fail(reason: str) -> None:
    if _required():
        pytest.fail(f"the CUDA suite is required here but cannot run: {reason}")
    pytest.skip(reason)


def _suite_reason():
    from heat_fast.triton_kernels.common import interpreting

    if ON_GPU and not torch.cuda.is_available():
        return "no CUDA GPU"
    if ON_GPU and interpreting():
        return ("TRITON_INTERPRET=1 would run the Triton kernels of CUDA tensors in the "
                "interpreter; run the CUDA suite with TRITON_INTERPRET=0")
    return None


@pytest.fixture(autouse=True)
def _cuda_suite():
    reason = _suite_reason()
    if reason is not None:
        _skip_or_fail(reason)


def gpu_only() -> None:
    if not ON_GPU:
        pytest.skip("needs CUDA tensors (this run uses HEAT_FAST_CUDA_SUITE_DEVICE=cpu)")


def need(backend: str, dtype: torch.dtype = torch.float32) -> None:
    reason = dispatch.unavailable_reason(backend, DEVICE, dtype)
    if reason is not None:
        _skip_or_fail(f"backend {backend!r} cannot run on {DEVICE}: {reason}")


def he_inputs(batch, classes, dim, dtype=torch.float32, seed=0):
    """Seeded inputs drawn on the CPU (the same numbers on every device), moved to DEVICE."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen).to(DEVICE, dtype)
    w = torch.randn(classes, dim, generator=gen).to(DEVICE, dtype)
    y = torch.randint(0, classes, (batch,), generator=gen).to(DEVICE)
    return x, w, y


def pgd_inputs(shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=gen)
    x_adv = (x_nat + 0.05 * (2 * torch.rand(shape, generator=gen) - 1)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen)
    return tuple(t.to(DEVICE, dtype) for t in (x_adv, grad, x_nat))


# --- HE loss -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", HE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_he_loss_matches_float64_truth(backend, dtype, shape):
    need(backend, dtype)
    x, w, y = he_inputs(*shape, dtype=dtype)
    check_against_reference(x, w, y, backend, scale=15.0, margin=0.2)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("options", [dict(reduction="none", label_smoothing=0.1),
                                     dict(reduction="sum", scale=64.0, margin=0.35),
                                     dict(feature_norm=False, scale=2.0),
                                     dict(weight_norm=False, scale=2.0)])
def test_he_loss_options(backend, options):
    need(backend)
    x, w, y = he_inputs(9, 37, 50, torch.bfloat16, seed=1)
    check_against_reference(x, w, y, backend, **options)


@pytest.mark.parametrize("backend", FAST)
def test_he_loss_mixed_autocast_dtypes(backend):
    need(backend)
    x, w, y = he_inputs(16, 100, 64, seed=2)
    check_against_reference(x.to(torch.bfloat16), w, y, backend)
    check_against_reference(x.half(), w, y, backend)


@pytest.mark.parametrize("backend", FAST)
def test_he_loss_non_contiguous_and_misaligned(backend):
    need(backend)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(11, 80, generator=gen).to(DEVICE)[:, ::2]
    w = torch.randn(40, 13, generator=gen).to(DEVICE).t()
    y = torch.randint(0, 13, (22,), generator=gen).to(DEVICE)[::2]
    check_against_reference(x, w, y, backend)
    flat = torch.randn(7 * 33 + 1, generator=gen).to(DEVICE, torch.bfloat16)
    misaligned = flat[1:].view(7, 33)
    assert misaligned.data_ptr() % 16 != 0
    weight = torch.randn(10, 33, generator=gen).to(DEVICE, torch.bfloat16)
    labels = torch.randint(0, 10, (7,), generator=gen).to(DEVICE)
    check_against_reference(misaligned, weight, labels, backend)


@pytest.mark.parametrize("backend", FAST)
def test_he_loss_confident_logits_keep_the_true_class_gradient(backend):
    need(backend)
    gen = torch.Generator().manual_seed(4)
    w = F.normalize(torch.randn(10, 32, generator=gen), dim=1)
    x = (w + 0.05 * torch.randn(10, 32, generator=gen)).to(DEVICE)
    w, y = w.to(DEVICE), torch.arange(10, device=DEVICE)
    args = (y, 30.0, 0.1, 0.0, True, True)
    _, grad_cos, _, _ = he_ce_forward_op(x, w, *args, backend)
    _, truth, _, _ = he_ce_forward_op(x.double(), w.double(), *args, backend)
    true_grad, true_truth = grad_cos[y, y].double(), truth[y, y]
    assert (true_truth.abs() > 0).all()
    assert ((true_grad - true_truth).abs() / true_truth.abs()).max() < 1e-4


@pytest.mark.parametrize("backend", FAST)
def test_he_loss_is_deterministic(backend):
    need(backend)
    x, w, y = he_inputs(*((256, 1000, 512) if ON_GPU else (20, 30, 40)), torch.bfloat16, seed=5)
    first = loss_and_grads(x, w, y, backend)
    second = loss_and_grads(x, w, y, backend)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", FAST)
def test_he_loss_opcheck(backend):
    need(backend)
    x, w, y = he_inputs(5, 6, 7, seed=6)
    x.requires_grad_(True)
    w.requires_grad_(True)
    torch.library.opcheck(he_ce_forward_op, (x, w, y, 15.0, 0.2, 0.1, True, True, backend))


@pytest.mark.parametrize("backend", FAST)
def test_he_loss_under_torch_compile_fullgraph(backend):
    need(backend)
    torch._dynamo.reset()
    x, w, y = he_inputs(32, 10, 64, seed=7)
    head = torch.nn.Linear(64, 64).to(DEVICE)

    def step(inputs):
        return hf.he_cross_entropy(head(inputs), w, y, backend=backend)

    torch.testing.assert_close(torch.compile(step, fullgraph=True)(x), step(x),
                               rtol=1e-5, atol=1e-6)


# --- HE loss, large-class (chunked) path ---------------------------------------------------

# (B, C, D, classes per chunk; 0: the backend's own): C = 100k+ with small B and D, a head whose
# chunks end mid-tile, and one of several chunks (the SPEC §7 shape is in the memory test below).
CHUNKED_SHAPES = ([(5, 100003, 32, 0), (33, 3001, 65, 256), (64, 100003, 128, 20000)] if ON_GPU
                  else [(5, 301, 17, 64), (9, 100, 33, 0)])


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CHUNKED_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_he_loss_chunked_matches_float64_truth(backend, dtype, shape):
    need(backend, dtype)
    batch, classes, dim, chunk = shape
    x, w, y = he_inputs(batch, classes, dim, dtype=dtype, seed=20)
    check_chunked_against_reference(x, w, y, backend, chunk or True, scale=30.0, margin=0.3)


@pytest.mark.parametrize("backend", FAST)
def test_he_loss_chunked_equals_unchunked(backend):
    need(backend)
    x, w, y = he_inputs(*((64, 5000, 128) if ON_GPU else (6, 250, 20)), seed=21)
    chunked = loss_and_grads(x, w, y, backend, chunked=97, label_smoothing=0.1)
    whole = loss_and_grads(x, w, y, backend, chunked=False, label_smoothing=0.1)
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("backend", FAST)
def test_he_loss_chunked_is_deterministic(backend):
    need(backend)
    x, w, y = he_inputs(*((256, 40000, 256) if ON_GPU else (7, 300, 24)), torch.bfloat16,
                        seed=22)
    first = loss_and_grads(x, w, y, backend, chunked=True)
    second = loss_and_grads(x, w, y, backend, chunked=True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", FAST)
def test_he_loss_chunked_holds_no_batch_by_classes_buffer(backend):
    """B256 D512 C131072 bf16: the peak beyond the inputs and their gradients stays under half
    of the (B, C) float32 buffer of the unchunked path (which exceeds it)."""
    gpu_only()
    need(backend, torch.bfloat16)
    x, w, y = he_inputs(256, 131072, 512, torch.bfloat16, seed=23)
    x.requires_grad_(True)
    w.requires_grad_(True)
    buffer = 256 * 131072 * 4

    def extra(chunked):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        grads = torch.autograd.grad(hf.he_cross_entropy(x, w, y, backend=backend,
                                                        chunked=chunked), (x, w))
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base - sum(g.nbytes for g in grads)

    assert extra(True) <= buffer / 2
    assert extra(False) >= buffer


@pytest.mark.parametrize("backend", FAST)
def test_he_loss_chunked_in_a_cuda_graph_and_under_compile(backend):
    """The chunked forward+backward captured once and replayed on new data, and compiled with
    fullgraph=True: no host synchronisation, no data-dependent Python."""
    gpu_only()
    need(backend)
    x, w, y = he_inputs(64, 5000, 128, torch.bfloat16, seed=24)
    x.requires_grad_(True)
    w.requires_grad_(True)

    def body():
        loss = hf.he_cross_entropy(x, w, y, backend=backend, chunked=1000)
        return (loss, *torch.autograd.grad(loss, (x, w)))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = body()
    fresh = he_inputs(64, 5000, 128, torch.bfloat16, seed=25)
    with torch.no_grad():
        x.copy_(fresh[0])
        w.copy_(fresh[1])
    y.copy_(fresh[2])
    graph.replay()
    expected = body()
    for a, b in zip(captured, expected):
        torch.testing.assert_close(a, b)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: hf.he_cross_entropy(a, b, y, backend=backend,
                                                              chunked=1000), fullgraph=True)
    torch.testing.assert_close(compiled(x, w), expected[0], rtol=1e-5, atol=1e-6)


# --- projected step and random start ------------------------------------------------------

@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PGD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_pgd_step_matches_reference(backend, norm, dtype, shape):
    need(backend, dtype)
    x_adv, grad, x_nat = pgd_inputs(shape, dtype)
    gen = torch.Generator().manual_seed(1)
    eps = (0.01 + 0.05 * torch.rand(shape[0], generator=gen)).to(DEVICE)
    alpha = (0.005 + 0.01 * torch.rand(shape[0], generator=gen)).to(DEVICE)
    if norm == "l2":
        eps, alpha = eps * 20, alpha * 20
    ref = hf.pgd_step(x_adv, grad, x_nat, eps, alpha, norm, backend="reference")
    fast = hf.pgd_step(x_adv, grad, x_nat, eps, alpha, norm, backend=backend)
    assert_step_matches(fast, ref, x_nat, eps)
    inplace = x_adv.clone()
    assert hf.pgd_step(inplace, grad, x_nat, eps, alpha, norm, out=inplace,
                       backend=backend) is inplace
    assert_step_matches(inplace, ref, x_nat, eps)


@pytest.mark.parametrize("backend", FAST)
def test_pgd_step_non_contiguous_and_misaligned(backend):
    need(backend)
    x_adv, grad, x_nat = pgd_inputs((4, 6, 5), seed=2)
    views = [t.transpose(1, 2) for t in (x_adv, grad, x_nat)]
    ref = hf.pgd_step(*views, 0.1, 0.03, "linf", backend="reference")
    assert_step_matches(hf.pgd_step(*views, 0.1, 0.03, "linf", backend=backend), ref,
                        views[2], 0.1)
    padded = [torch.cat([t.new_zeros(1), t.flatten()])[1:].view(t.shape)
              for t in (x_adv, grad, x_nat)]
    assert padded[0].data_ptr() % 16 != 0
    ref = hf.pgd_step(*padded, 0.1, 0.03, "linf", backend="reference")
    assert_step_matches(hf.pgd_step(*padded, 0.1, 0.03, "linf", backend=backend), ref,
                        padded[2], 0.1)


@pytest.mark.parametrize("backend", FAST)
def test_pgd_step_opcheck(backend):
    need(backend)
    x_adv, grad, x_nat = pgd_inputs((3, 4, 5), seed=3)
    eps = torch.full((3, 1, 1), 0.1, device=DEVICE)
    box = (torch.tensor(0.0), torch.tensor(1.0))
    for norm in ("linf", "l2"):
        for delta in (False, True):
            torch.library.opcheck(pgd_step_op, (x_adv.clone(), x_adv, grad, x_nat, eps, eps * 0.3,
                                                *box, norm, delta, backend))


@pytest.mark.parametrize("backend", FAST)
def test_pgd_per_channel_budgets_and_delta_form(backend):
    need(backend)
    x_adv, grad, x_nat = pgd_inputs((64, 3, 32, 32), seed=16)
    std = torch.tensor([0.2471, 0.2435, 0.2616], device=DEVICE).reshape(3, 1, 1)
    eps, alpha, lo, hi = (8 / 255) / std, (2 / 255) / std, -1.9 / std * 0.5, 1.0 / std
    for fn, start in ((hf.pgd_step, x_adv), (hf.pgd_delta_step, x_adv - x_nat)):
        ref = fn(start, grad, x_nat, eps, alpha, clip=(lo, hi), backend="reference")
        assert_step_matches(fn(start, grad, x_nat, eps, alpha, clip=(lo, hi), backend=backend),
                            ref, x_nat, eps)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_init_reproducible_inside_the_ball(backend, norm):
    need(backend)
    x_nat = pgd_inputs((16, 3, 32, 32), seed=4)[2]
    eps = 8 / 255 if norm == "linf" else 0.5
    starts = [hf.random_init(x_nat, eps, norm, generator=torch.Generator(DEVICE).manual_seed(7),
                             backend=backend) for _ in range(2)]
    assert torch.equal(*starts)
    delta = (starts[0] - x_nat).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-5)).all() and (starts[0] >= 0).all() and (starts[0] <= 1).all()
    assert (size > 0).all()


def test_random_init_refuses_a_generator_of_another_device():
    gpu_only()
    x_nat = pgd_inputs((2, 3), seed=5)[2]
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="generator is on cpu"):
            hf.random_init(x_nat, 0.1, generator=torch.Generator().manual_seed(0),
                           backend=backend)


# --- what only a GPU shows -----------------------------------------------------------------

@pytest.mark.parametrize("backend", FAST)
def test_ops_run_on_the_current_stream(backend):
    """Inputs produced on a side stream and the ops launched there see them, finished."""
    gpu_only()
    need(backend)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x, w, y = he_inputs(64, 100, 256, seed=8)
        x_adv, grad, x_nat = pgd_inputs((64, 3, 32, 32), seed=9)
        torch.cuda._sleep(10_000_000)  # keep the stream busy so a wrong-stream launch races
        loss = hf.he_cross_entropy(x * 2, w, y, backend=backend)
        step = hf.pgd_step(x_adv + 0, grad, x_nat, 8 / 255, 2 / 255, backend=backend)
    side.synchronize()
    torch.testing.assert_close(loss, hf.he_cross_entropy(x * 2, w, y, backend="reference"),
                               rtol=1e-5, atol=1e-6)
    assert_step_matches(step, hf.pgd_step(x_adv, grad, x_nat, 8 / 255, 2 / 255,
                                          backend="reference"), x_nat, 8 / 255)


@pytest.mark.parametrize("backend", FAST)
def test_capture_in_a_cuda_graph_and_replay(backend):
    """Loss forward+backward and an in-place step captured once, replayed on new data."""
    gpu_only()
    need(backend)
    x, w, y = he_inputs(128, 10, 640, torch.bfloat16, seed=10)
    x.requires_grad_(True)
    w.requires_grad_(True)
    x_adv, grad, x_nat = pgd_inputs((128, 3, 32, 32), seed=11)

    def body():
        loss = hf.he_cross_entropy(x, w, y, backend=backend)
        gx, gw = torch.autograd.grad(loss, (x, w))
        hf.pgd_step(x_adv, grad, x_nat, 8 / 255, 2 / 255, out=x_adv, backend=backend)
        return loss, gx, gw

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm up: compile and load every kernel before capture
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = body()
    fresh_x, fresh_w, fresh_y = he_inputs(128, 10, 640, torch.bfloat16, seed=12)
    fresh = pgd_inputs((128, 3, 32, 32), seed=13)
    with torch.no_grad():
        x.copy_(fresh_x)
        w.copy_(fresh_w)
    y.copy_(fresh_y)
    for static, new in zip((x_adv, grad, x_nat), fresh):
        static.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    expected = loss_and_grads(fresh_x, fresh_w, fresh_y, backend)
    torch.testing.assert_close(captured[0], expected[0].reshape(()))
    # loss_and_grads weights a mean by 0.5
    torch.testing.assert_close(captured[1], expected[1] * 2)
    torch.testing.assert_close(captured[2], expected[2] * 2)
    assert_step_matches(x_adv, hf.pgd_step(*fresh, 8 / 255, 2 / 255, backend="reference"),
                        fresh[2], 8 / 255)


@pytest.mark.parametrize("backend", FAST)
def test_tensors_on_another_gpu_than_the_current_one(backend):
    gpu_only()
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    need(backend)
    x, w, y = (t.to("cuda:1") for t in he_inputs(16, 10, 32, seed=14))
    with torch.cuda.device(0):
        loss = hf.he_cross_entropy(x, w, y, backend=backend)
    assert loss.device == torch.device("cuda:1")
    torch.testing.assert_close(loss, hf.he_cross_entropy(x, w, y, backend="reference"),
                               rtol=1e-5, atol=1e-6)


AUTOCAST_SCRIPT = '''
import sys, torch, heat_fast as hf
backend = sys.argv[1]
gen = torch.Generator().manual_seed(0)
body = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU()).cuda()
w = torch.randn(100, 128, generator=gen).cuda().requires_grad_(True)
x = torch.randn(32, 64, generator=gen).cuda()
y = torch.randint(0, 100, (32,), generator=gen).cuda()
def run(autocast):
    with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
        features = body(x)
        loss = hf.he_cross_entropy(features, w, y, backend=backend)
        features_fp32 = features.float()
    grads = torch.autograd.grad(loss, (w,))
    reference = hf.he_cross_entropy(features_fp32.detach(), w.detach(), y, backend="reference")
    return loss, reference, grads[0]
loss, reference, grad = run(True)
torch.cuda.synchronize()
assert torch.isfinite(grad).all(), "non-finite weight gradient"
assert abs(loss.item() - reference.item()) <= 1e-5 * max(1.0, abs(reference.item()))
print("ok")
'''


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_in_a_subprocess(backend):
    """The op inside torch.autocast keeps float32 math (a memory error would kill the child)."""
    gpu_only()
    need(backend)
    result = subprocess.run([sys.executable, "-c", AUTOCAST_SCRIPT, backend],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TRITON_INTERPRET": "0"})
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


LABEL_SCRIPT = '''
import sys, torch, heat_fast as hf
x, w = torch.randn(4, 8, device="cuda"), torch.randn(3, 8, device="cuda")
loss = hf.he_cross_entropy(x, w, torch.tensor([0, 1, 2, 3], device="cuda"), backend=sys.argv[1])
torch.cuda.synchronize()
print("no error")
'''


@pytest.mark.parametrize("backend", FAST)
def test_label_out_of_range_trips_a_device_assert(backend):
    """On the GPU the label range is checked inside the kernel, not by extra launches."""
    gpu_only()
    need(backend)
    result = subprocess.run([sys.executable, "-c", LABEL_SCRIPT, backend], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "0"})
    assert result.returncode != 0 and "no error" not in result.stdout
    assert "assert" in result.stderr.lower(), result.stderr[-2000:]


def test_fp16_backward_operand_scaling_keeps_small_gradients():
    """Native CUDA float16 backward: a large batch (small dloss/dx) with small weight norms."""
    need("native", torch.float16)
    x, w, y = he_inputs(1024, 50, 96, torch.float16, seed=15)
    check_against_reference(x * 30, w * 0.01, y, "native", scale=64.0)

