"""pgd_step and random_init: every fast backend against the reference, and their properties."""
import pytest
import torch

import heat_fast as hf
from heat_fast.ops.pgd import pgd_step_op, random_init_op
from numerics import UNIT_ROUNDOFF

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SHAPES = [(1, 1), (3, 5), (2, 3, 7, 7), (4, 3, 32, 32)]


def make_batch(shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=gen)
    x_adv = (x_nat + 0.05 * (2 * torch.rand(shape, generator=gen) - 1)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen)
    return x_adv.to(dtype), grad.to(dtype), x_nat.to(dtype)


def per_sample_budgets(batch, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return 0.01 + 0.05 * torch.rand(batch, generator=gen), 0.005 + 0.01 * torch.rand(batch, generator=gen)


def assert_step_matches(fast, ref, x_nat, eps):
    """Same step up to the output dtype's rounding of values in [0, 1] (one ulp at 1)."""
    assert fast.dtype == ref.dtype and fast.shape == ref.shape
    tol = 2 * UNIT_ROUNDOFF[fast.dtype] + (1e-6 if fast.dtype == torch.float32 else 0)
    torch.testing.assert_close(fast.float(), ref.float(), rtol=0, atol=tol)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_step_matches_reference(fast_backend, norm, dtype, shape):
    x_adv, grad, x_nat = make_batch(shape, dtype)
    eps, alpha = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.1)
    ref = hf.pgd_step(x_adv, grad, x_nat, eps, alpha, norm, backend="reference")
    fast = hf.pgd_step(x_adv, grad, x_nat, eps, alpha, norm, backend=fast_backend)
    assert_step_matches(fast, ref, x_nat, eps)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_sample_budgets(fast_backend, norm):
    x_adv, grad, x_nat = make_batch((5, 3, 4, 4), seed=2)
    eps, alpha = per_sample_budgets(5)
    ref = hf.pgd_step(x_adv, grad, x_nat, eps, alpha, norm, backend="reference")
    fast = hf.pgd_step(x_adv, grad, x_nat, eps, alpha, norm, backend=fast_backend)
    assert_step_matches(fast, ref, x_nat, eps)
    delta = (fast - x_nat).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()


def test_l2_split_reduction_path(fast_backend, monkeypatch):
    if fast_backend == "triton":
        from heat_fast.triton_kernels import pgd as triton_pgd

        monkeypatch.setattr(triton_pgd, "SINGLE_PROGRAM_MAX", 16)
        monkeypatch.setattr(triton_pgd, "CHUNK", 16)
    x_adv, grad, x_nat = make_batch((3, 3, 5, 5), seed=3)
    ref = hf.pgd_step(x_adv, grad, x_nat, 0.3, 0.2, "l2", clip=None, backend="reference")
    fast = hf.pgd_step(x_adv, grad, x_nat, 0.3, 0.2, "l2", clip=None, backend=fast_backend)
    assert_step_matches(fast, ref, x_nat, 0.3)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_non_contiguous_and_in_place(fast_backend, norm):
    x_adv, grad, x_nat = make_batch((4, 6, 5), seed=4)
    x_adv_t, grad_t, x_nat_t = (t.transpose(1, 2) for t in (x_adv, grad, x_nat))
    assert not x_adv_t.is_contiguous()
    ref = hf.pgd_step(x_adv_t, grad_t, x_nat_t, 0.1, 0.03, norm, backend="reference")
    fast = hf.pgd_step(x_adv_t, grad_t, x_nat_t, 0.1, 0.03, norm, backend=fast_backend)
    assert_step_matches(fast, ref, x_nat_t, 0.1)
    inplace = x_adv.clone()
    returned = hf.pgd_step(inplace, grad, x_nat, 0.1, 0.03, norm, out=inplace, backend=fast_backend)
    assert returned is inplace
    expected = hf.pgd_step(x_adv, grad, x_nat, 0.1, 0.03, norm, backend="reference")
    assert_step_matches(inplace, expected, x_nat, 0.1)
    strided_out = torch.empty(4, 5, 6).transpose(1, 2)
    hf.pgd_step(x_adv, grad, x_nat, 0.1, 0.03, norm, out=strided_out, backend=fast_backend)
    assert_step_matches(strided_out, expected, x_nat, 0.1)


@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_linf_properties(backend):
    from conftest import require_backend

    require_backend(backend)
    x_adv, grad, x_nat = make_batch((6, 3, 8, 8), seed=5)
    grad[0, 0, 0, :3] = 0.0
    grad[1, 0, 0, :3] = float("nan")
    eps = 8 / 255
    out = hf.pgd_step(x_adv, grad, x_nat, eps, 2 / 255, backend=backend)
    assert torch.isfinite(out).all()
    assert ((out - x_nat).abs() <= eps + 1e-6).all()
    assert out.min() >= 0 and out.max() <= 1
    for sample in (0, 1):
        untouched = x_adv[sample, 0, 0, :3]
        clipped = torch.minimum(torch.maximum(untouched, x_nat[sample, 0, 0, :3] - eps),
                                x_nat[sample, 0, 0, :3] + eps).clamp(0, 1)
        torch.testing.assert_close(out[sample, 0, 0, :3], clipped)
    zero_eps = hf.pgd_step(x_adv, grad, x_nat, 0.0, 2 / 255, backend=backend)
    torch.testing.assert_close(zero_eps, x_nat)


@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_l2_properties(backend):
    from conftest import require_backend

    require_backend(backend)
    x_adv, grad, x_nat = make_batch((6, 3, 8, 8), seed=6)
    grad[0] = 0.0
    grad[1, 0, 0, 0] = float("nan")
    grad[2, 0, 0, 0] = float("inf")
    out = hf.pgd_step(x_adv, grad, x_nat, 0.5, 0.2, "l2", backend=backend)
    assert torch.isfinite(out).all()
    assert ((out - x_nat).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out[0], x_adv[0].clamp(0, 1))


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_random_init_inside_ball_and_reproducible(backend, norm):
    from conftest import require_backend

    require_backend(backend)
    x_nat = make_batch((8, 3, 6, 6), seed=7)[2]
    eps = torch.linspace(0.05, 0.4, 8)

    def draw(seed):
        return hf.random_init(x_nat, eps, norm, generator=torch.Generator().manual_seed(seed),
                              backend=backend)

    first, again, other = draw(0), draw(0), draw(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    delta = (first - x_nat).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert first.min() >= 0 and first.max() <= 1
    assert (size > 0).all()


@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_random_init_distribution(backend):
    """Unclipped L∞ starts are U(−ε, ε): mean 0, variance ε²/3; L2 radii are ε·U(0, 1)."""
    from conftest import require_backend

    require_backend(backend)
    x_nat = torch.zeros(64, 256)
    gen = torch.Generator().manual_seed(8)
    delta = hf.random_init(x_nat, 0.5, "linf", clip=None, generator=gen, backend=backend)
    assert abs(delta.mean().item()) < 0.01
    assert abs(delta.var().item() - 0.25 / 3) < 0.005
    radii = hf.random_init(x_nat, 0.5, "l2", clip=None, generator=gen, backend=backend).norm(dim=1)
    assert radii.max() <= 0.5 + 1e-6 and 0.15 < radii.mean() < 0.35


def test_opcheck(fast_backend):
    x_adv, grad, x_nat = make_batch((3, 2, 5), seed=9)
    eps, alpha = per_sample_budgets(3)
    lo, hi = torch.tensor(0.0), torch.tensor(1.0)
    eps, alpha = eps.reshape(3, 1, 1), alpha.reshape(3, 1, 1)
    for norm in ("linf", "l2"):
        for delta in (False, True):
            torch.library.opcheck(pgd_step_op, (torch.empty_like(x_adv), x_adv, grad, x_nat, eps,
                                                alpha, lo, hi, norm, delta, fast_backend))
        torch.library.opcheck(random_init_op, (torch.empty_like(x_nat), x_nat, eps, lo, hi,
                                               torch.tensor(123), norm, fast_backend))


@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_bad_inputs_name_the_argument(backend):
    from conftest import require_backend

    require_backend(backend)
    x_adv, grad, x_nat = make_batch((3, 4), seed=10)
    cases = [
        ((x_adv, grad, x_nat, -0.1, 0.01), {}, "eps"),
        ((x_adv, grad, x_nat, 0.1, -0.01), {}, "alpha"),
        ((x_adv, grad, x_nat, torch.tensor([0.1, -0.1, 0.1]), 0.01), {}, "eps"),
        ((x_adv, grad, x_nat, torch.ones(2), 0.01), {}, "eps"),
        ((x_adv, grad[:2], x_nat, 0.1, 0.01), {}, "grad"),
        ((x_adv, grad, x_nat[:, :3], 0.1, 0.01), {}, "x_nat"),
        ((x_adv.long(), grad, x_nat, 0.1, 0.01), {}, "x_adv"),
        ((x_adv, grad, x_nat, 0.1, 0.01), {"norm": "l1"}, "norm"),
        ((x_adv, grad, x_nat, 0.1, 0.01), {"clip": (1.0, 0.0)}, "clip"),
        ((x_adv, grad, x_nat, 0.1, 0.01), {"out": torch.empty(3, 5)}, "out"),
        ((x_adv, grad.to("meta"), x_nat, 0.1, 0.01), {}, "device"),
    ]
    for args, kwargs, needle in cases:
        with pytest.raises((ValueError, TypeError), match=needle):
            hf.pgd_step(*args, backend=backend, **kwargs)
    with pytest.raises(ValueError, match="eps"):
        hf.random_init(x_nat, -1.0, backend=backend)
    with pytest.raises(ValueError, match="norm"):
        hf.random_init(x_nat, 0.1, "linf2", backend=backend)
