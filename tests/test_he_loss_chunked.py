"""The large-class HE loss without B×C buffers (SPEC §2.1, heat_fast.ops.he_loss_chunked):
selection, every fast backend against the float64 reference, chunk boundaries, gradients,
torch.compile, and its memory."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import heat_fast as hf
from conftest import require_backend
from heat_fast.ops import dispatch, he_loss_chunked
from heat_fast.ops.he_loss_chunked import chunk_for, he_ce_chunked_forward_op
from numerics import UNIT_ROUNDOFF, assert_error_ratio
from test_he_loss import loss_and_grads, make_inputs


def largest_logit(x, w, scale=15.0, feature_norm=True, weight_norm=True, **_):
    """max |z| of the logits s·x̂·ŵᵀ (float64), x̂ and ŵ normalized or raw as the options say."""
    x, w = x.double(), w.double()
    x = F.normalize(x, dim=1) if feature_norm else x
    w = F.normalize(w, dim=1) if weight_norm else w
    return (scale * x @ w.T).abs().max().item()


def check_against_reference(x, w, y, backend, chunked, **kwargs):
    """The chunked path's loss and gradients within 2× the error of the reference in the same
    precision, against the float64 truth; returns the fast results. The gradients' floor has
    a term that grows with the largest logit |z|: a probability e^{z − lse} computed in float32
    carries an error of about |z|·u whatever the summation order (a reference that rounds
    luckily on a case is no bound), which matters where the logits are not bounded by s
    (unnormalized features or weights)."""
    truth = loss_and_grads(x.double(), w.double(), y, "reference", **kwargs)
    ref = loss_and_grads(x, w, y, "reference", **kwargs)
    fast = loss_and_grads(x, w, y, backend, chunked=chunked, **kwargs)
    assert fast[0].dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    assert fast[1].dtype == x.dtype and fast[2].dtype == w.dtype
    conditioning = max(1.0, largest_logit(x, w, **kwargs))
    for name, f, r, t in zip(("loss", "d_features", "d_weight"), fast, ref, truth):
        assert torch.isfinite(f).all(), name
        if x.dtype == torch.float64:
            floor = None
        elif name == "loss":
            floor = 64 * UNIT_ROUNDOFF[torch.float32] * kwargs.get("scale", 15.0)
        else:
            floor = 8 * max(t.abs().max().item(), 1e-3) * (
                UNIT_ROUNDOFF[f.dtype] + UNIT_ROUNDOFF[torch.float32] * conditioning)
        assert_error_ratio(f, r, t, floor=floor, what=f"{backend} chunked={chunked} {name} "
                           f"{x.dtype} {tuple(x.shape)}x{tuple(w.shape)}")
    return fast


@pytest.fixture
def chunked_calls(monkeypatch):
    """Counts the calls of the chunked forward kernel of each backend."""
    calls = []
    for name in ("native", "triton"):
        module = dispatch.kernels(name)
        if hasattr(module, "he_ce_chunked_forward"):
            original = module.he_ce_chunked_forward

            def spy(*args, _original=original, _name=name):
                calls.append((_name, args[-1]))
                return _original(*args)

            monkeypatch.setattr(module, "he_ce_chunked_forward", spy)
    return calls


# --- selection -------------------------------------------------------------------------------

def test_selection_threshold_and_switch():
    big_batch = -(-he_loss_chunked.CHUNKED_MIN_BYTES // (4 * 1000))  # the first that reaches it
    assert chunk_for(1, he_loss_chunked.CHUNKED_MIN_CLASSES - 1, None) is None
    assert chunk_for(1, he_loss_chunked.CHUNKED_MIN_CLASSES, None) == 0
    assert chunk_for(big_batch, 1000, None) == 0
    assert chunk_for(big_batch - 1, 1000, None) is None
    assert chunk_for(1, 10, True) == 0 and chunk_for(10**6, 10**6, False) is None
    assert chunk_for(1, 10, 7) == 7
    for bad in (0, -3, 2.5, "yes"):
        with pytest.raises(ValueError, match="chunked must be"):
            chunk_for(1, 10, bad)


@pytest.mark.parametrize("chunked", [True, 16])
def test_reference_backend_refuses_a_forced_chunked_path(chunked):
    x, w, y = make_inputs(3, 40, 5)
    with pytest.raises(ValueError, match="chunked=.* needs the triton or native backend"):
        hf.he_cross_entropy(x, w, y, backend="reference", chunked=chunked)
    with pytest.raises(ValueError, match="chunked must be"):
        hf.HECrossEntropyLoss(chunked=0)


def test_large_heads_take_the_chunked_path_by_themselves(chunked_calls):
    require_backend("native")
    x, w, y = make_inputs(2, he_loss_chunked.CHUNKED_MIN_CLASSES, 4, seed=1)
    hf.he_cross_entropy(x, w, y, backend="native")
    assert chunked_calls == [("native", 0)]
    hf.he_cross_entropy(x, w, y, backend="native", chunked=False)
    hf.he_cross_entropy(x[:, :3], w[:100, :3], y % 100, backend="native")
    assert len(chunked_calls) == 1
    loss = hf.HECrossEntropyLoss(backend="native", chunked=8)(x, w[:100], y % 100)
    assert chunked_calls[-1] == ("native", 8) and loss.dtype == torch.float32


# --- numerics against the float64 reference ---------------------------------------------------

@pytest.mark.parametrize("classes", [32768 + 77, 100003])
def test_native_large_classes_match_float64(classes, chunked_calls):
    """C of 32768 + an odd remainder and 100k+: the automatic choice, small B and D."""
    require_backend("native")
    x, w, y = make_inputs(3, classes, 8, seed=classes)
    check_against_reference(x, w, y, "native", None, scale=30.0, margin=0.3,
                            label_smoothing=0.1)
    assert {call for call in chunked_calls} == {("native", 0)}


@pytest.mark.parametrize("classes,chunk", [(1001, 64), (1000, 100), (7, 64), (300, 1)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_chunk_boundaries_and_reductions(classes, chunk, reduction):
    """C not a multiple of the chunk, a chunk larger than C, single-class chunks."""
    require_backend("native")
    x, w, y = make_inputs(9, classes, 17, seed=chunk)
    check_against_reference(x, w, y, "native", chunk, reduction=reduction)


@pytest.mark.parametrize("options", [dict(scale=1.0, margin=0.0), dict(scale=64.0, margin=0.35),
                                     dict(label_smoothing=0.1),
                                     dict(feature_norm=False, scale=2.0),
                                     dict(weight_norm=False, scale=2.0),
                                     dict(feature_norm=False, weight_norm=False, scale=2.0)])
def test_options(fast_backend, options):
    x, w, y = make_inputs(5, 150, 12, seed=3)
    check_against_reference(x, w, y, fast_backend, 64, reduction="none", **options)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dim", [32, 33])  # odd D: bf16 products fall back to float32 rows
def test_sixteen_bit_inputs(dtype, dim):
    require_backend("native")
    x, w, y = make_inputs(13, 500, dim, dtype, seed=dim)
    check_against_reference(x, w, y, "native", 96, scale=30.0, label_smoothing=0.05)


def test_triton_sixteen_bit_and_mixed_inputs():
    require_backend("triton")
    x, w, y = make_inputs(5, 200, 24, seed=4)
    check_against_reference(x.to(torch.bfloat16), w.to(torch.bfloat16), y, "triton", 64)
    check_against_reference(x.half(), w, y, "triton", 128)


def test_mixed_autocast_dtypes_and_non_contiguous_inputs():
    require_backend("native")
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(7, 40, generator=gen)[:, ::2]
    w = torch.randn(20, 300, generator=gen).t()
    y = torch.randint(0, 300, (14,), generator=gen)[::2]
    assert not (x.is_contiguous() or w.is_contiguous() or y.is_contiguous())
    check_against_reference(x, w, y, "native", 64)
    check_against_reference(x.to(torch.bfloat16), w, y, "native", 64)


def test_confident_logits_keep_the_target_gradient(fast_backend):
    """p_y ≈ 1: the loss and dloss/dcos_y keep their relative accuracy (no cancellation)."""
    classes, dim = 200, 32
    gen = torch.Generator().manual_seed(6)
    w = F.normalize(torch.randn(classes, dim, generator=gen), dim=1)
    y = torch.arange(0, classes, 20)
    x = w[y] + 0.02 * torch.randn(len(y), dim, generator=gen)
    args = (y, 40.0, 0.1, 0.0, True, True, 64, fast_backend)
    loss, _, target_grad, _, _ = he_ce_chunked_forward_op(x, w, *args)
    truth_loss, _, truth_grad, _, _ = he_ce_chunked_forward_op(x.double(), w.double(), *args)
    ref = hf.he_cross_entropy(x.double(), w.double(), y, 40.0, 0.1, reduction="none",
                              backend="reference")
    assert (ref < 1e-5).all() and (truth_grad.abs() > 0).all(), "the case must be confident"
    assert ((truth_loss - ref).abs() / ref).max() < 1e-6
    assert ((loss.double() - ref).abs() / ref).max() < 1e-4
    assert ((target_grad.double() - truth_grad).abs() / truth_grad.abs()).max() < 1e-4


@pytest.mark.parametrize("feature_norm,weight_norm", [(True, True), (False, False)])
def test_gradcheck(fast_backend, feature_norm, weight_norm):
    x, w, y = make_inputs(3, 20, 5, torch.float64, seed=8)
    x.requires_grad_(True)
    w.requires_grad_(True)

    def loss(a, b):
        return hf.he_cross_entropy(a, b, y, 4.0, 0.25, "none", 0.1, feature_norm, weight_norm,
                                   backend=fast_backend, chunked=7)

    assert torch.autograd.gradcheck(loss, (x, w))


def test_opcheck(fast_backend):
    x, w, y = make_inputs(5, 30, 7, seed=9)
    x.requires_grad_(True)
    w.requires_grad_(True)
    torch.library.opcheck(he_ce_chunked_forward_op,
                          (x, w, y, 15.0, 0.2, 0.1, True, True, 8, fast_backend))


def test_chunked_equals_unchunked(fast_backend):
    x, w, y = make_inputs(6, 250, 20, seed=10)
    chunked = loss_and_grads(x, w, y, fast_backend, chunked=64, reduction="none",
                             label_smoothing=0.1)
    whole = loss_and_grads(x, w, y, fast_backend, chunked=False, reduction="none",
                           label_smoothing=0.1)
    for name, a, b in zip(("loss", "d_features", "d_weight"), chunked, whole):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-6, msg=f"{fast_backend} {name}")


def test_results_do_not_depend_on_the_thread_count():
    require_backend("native")
    x, w, y = make_inputs(24, 5000, 64, torch.bfloat16, seed=11)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = loss_and_grads(x, w, y, "native", chunked=128)
        torch.set_num_threads(max(2, threads))
        many = loss_and_grads(x, w, y, "native", chunked=128)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


def test_torch_compile_fullgraph(fast_backend):
    torch._dynamo.reset()
    x, w, y = make_inputs(8, 130, 16, seed=12)
    backbone = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU())

    def step(inputs):
        return hf.he_cross_entropy(backbone(inputs), w, y, backend=fast_backend, chunked=64)

    compiled = torch.compile(step, fullgraph=True)
    torch.testing.assert_close(compiled(x), step(x), rtol=1e-5, atol=1e-6)


def test_ops_check_their_arguments(fast_backend):
    x, w, y = make_inputs(4, 50, 6, seed=15)
    args = (15.0, 0.2, 0.0, True, True)
    with pytest.raises(ValueError, match="weight must have D = 6"):
        he_ce_chunked_forward_op(x, w[:, :5], y, *args, 0, fast_backend)
    with pytest.raises(ValueError, match="chunk must be >= 0"):
        he_ce_chunked_forward_op(x, w, y, *args, -1, fast_backend)
    _, lse, target_grad, fn, wn = he_ce_chunked_forward_op(x, w, y, *args, 0, fast_backend)
    with pytest.raises(ValueError, match=r"weight_norms must have shape \(50,\)"):
        he_loss_chunked.he_ce_chunked_backward_op(torch.ones(4), x, w, y, lse, target_grad, fn,
                                                  wn[:3], 15.0, 0.0, True, True, 0, fast_backend)


def test_bad_labels_raise(fast_backend):
    x, w, y = make_inputs(4, 50, 6, seed=13)
    with pytest.raises(ValueError, match=r"target holds label \d+, expected labels in \[0, 50\)"):
        hf.he_cross_entropy(x, w, y + 50, backend=fast_backend, chunked=16)


# --- memory ----------------------------------------------------------------------------------

def test_triton_allocates_no_batch_by_classes_buffer():
    """Every tensor the Triton path allocates (torch's CPU allocator under the interpreter, per
    allocating op) stays at the size of a chunk's buffers or of a gradient, far below the
    (B, C) float32 buffer the unchunked path allocates (so the check can tell)."""
    require_backend("triton")
    batch, classes, dim, chunk = 64, 512, 4, 32
    x, w, y = make_inputs(batch, classes, dim, seed=14)
    x.requires_grad_(True)
    w.requires_grad_(True)

    def largest(**kwargs):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as prof:
            loss = hf.he_cross_entropy(x, w, y, backend="triton", **kwargs)
            torch.autograd.grad(loss, (x, w))
        return max(e.self_cpu_memory_usage for e in prof.events())

    buffer = batch * classes * 4
    assert largest(chunked=False) >= buffer
    assert largest(chunked=chunk) <= max(classes * dim, max(batch, dim) * chunk) * 4 < buffer / 8


def test_native_memory_beyond_inputs_and_gradients():
    """Fresh processes (benchmarks/he_loss_large_c_memory.py): the chunked path's peak beyond
    the inputs and their gradients stays under 10% of the (B, C) float32 buffer; the unchunked
    path's does not (so the measurement can tell)."""
    require_backend("native")
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("the peak is reset through /proc/self/clear_refs (Linux)")
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks", "he_loss_large_c_memory.py")

    def extra(impl):
        done = subprocess.run([sys.executable, script, "--impl", impl, "--batch", "128",
                               "--classes", "131072", "--dim", "32", "--threads", "1"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.splitlines()[-1])["of_bc_buffer"]

    assert extra("chunked") <= 0.1
    assert extra("unchunked") >= 1.0
