"""pgd_step / pgd_delta_step / random_init: per-channel budgets and boxes, the delta form, norm
aliases, edge shapes and the non-finite policy, on every backend against the reference."""
import pytest
import torch

import heat_fast as hf
from conftest import require_backend
from test_pgd import assert_step_matches, make_batch

BACKENDS = ("reference", "triton", "native")
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).reshape(3, 1, 1)
STD = torch.tensor([0.2471, 0.2435, 0.2616]).reshape(3, 1, 1)


@pytest.fixture(params=BACKENDS)
def backend(request):
    require_backend(request.param)
    return request.param


def normalized_batch(shape=(4, 3, 5, 5), seed=0):
    """Images in normalized space with the per-channel budgets of fast_adversarial's code."""
    x_adv, grad, x_nat = make_batch(shape, seed=seed)
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    to_normal = lambda t: (t - MEAN) / STD  # noqa: E731
    return to_normal(x_adv), grad, to_normal(x_nat), (8 / 255) / STD, (2 / 255) / STD, lo, hi


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_channel_budgets_and_box_match_reference(backend, norm):
    x_adv, grad, x_nat, eps, alpha, lo, hi = normalized_batch()
    if norm == "l2":
        eps, alpha = torch.full((4,), 0.5), torch.tensor(0.2)
    expected = hf.pgd_step(x_adv, grad, x_nat, eps, alpha, norm, clip=(lo, hi),
                           backend="reference")
    got = hf.pgd_step(x_adv, grad, x_nat, eps, alpha, norm, clip=(lo, hi), backend=backend)
    assert_step_matches(got, expected, x_nat, eps)
    assert (got >= lo - 1e-6).all() and (got <= hi + 1e-6).all()
    if norm == "linf":
        assert ((got - x_nat).abs() <= eps + 1e-6).all()


def test_delta_form_is_fast_adversarial_update(backend):
    """δ ← clamp(δ + α·sign(g), −ε, ε), then clamp(δ, lo − X, hi − X), written from the public
    algorithm's description (normalized space, per-channel ε, α and box)."""
    x_adv, grad, x_nat, eps, alpha, lo, hi = normalized_batch(seed=1)
    delta = x_adv - x_nat
    oracle = torch.clamp(delta + alpha * torch.sign(grad), -eps, eps)
    oracle = torch.max(torch.min(oracle, hi - x_nat), lo - x_nat)
    got = hf.pgd_delta_step(delta, grad, x_nat, eps, alpha, clip=(lo, hi), backend=backend)
    torch.testing.assert_close(got, oracle, rtol=0, atol=1e-6)


def test_delta_form_without_box_is_free_at_update(backend):
    x_adv, grad, x_nat = make_batch((3, 3, 4, 4), seed=2)
    delta = x_adv - x_nat
    oracle = torch.clamp(delta + (4 / 255) * torch.sign(grad), -4 / 255, 4 / 255)
    got = hf.pgd_delta_step(delta, grad, x_nat, 4 / 255, 4 / 255, clip=None, backend=backend)
    torch.testing.assert_close(got, oracle, rtol=0, atol=1e-7)


def test_delta_form_l2_matches_reference(backend):
    x_adv, grad, x_nat = make_batch((3, 2, 4, 4), seed=3)
    delta = x_adv - x_nat
    expected = hf.pgd_delta_step(delta, grad, x_nat, 0.3, 0.2, "l2", backend="reference")
    got = hf.pgd_delta_step(delta, grad, x_nat, 0.3, 0.2, "l2", backend=backend)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)
    assert (got.flatten(1).norm(dim=1) <= 0.3 + 1e-6).all()
    assert ((x_nat + got) >= -1e-6).all() and ((x_nat + got) <= 1 + 1e-6).all()


def test_triton_l2_split_path_with_per_channel_box(monkeypatch):
    require_backend("triton")
    from heat_fast.triton_kernels import pgd as triton_pgd

    monkeypatch.setattr(triton_pgd, "SINGLE_PROGRAM_MAX", 16)
    monkeypatch.setattr(triton_pgd, "CHUNK", 16)
    x_adv, grad, x_nat, _, _, lo, hi = normalized_batch((3, 3, 5, 5), seed=4)
    for delta in (False, True):
        fn = hf.pgd_delta_step if delta else hf.pgd_step
        start = x_adv - x_nat if delta else x_adv
        expected = fn(start, grad, x_nat, 0.4, 0.3, "l2", clip=(lo, hi), backend="reference")
        got = fn(start, grad, x_nat, 0.4, 0.3, "l2", clip=(lo, hi), backend="triton")
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("alias,norm", [("Linf", "linf"), ("l_inf", "linf"), ("L2", "l2"),
                                        ("l_2", "l2"), ("LINF", "linf")])
def test_norm_aliases(backend, alias, norm):
    x_adv, grad, x_nat = make_batch((2, 6), seed=5)
    expected = hf.pgd_step(x_adv, grad, x_nat, 0.1, 0.05, norm, backend="reference")
    torch.testing.assert_close(hf.pgd_step(x_adv, grad, x_nat, 0.1, 0.05, alias,
                                           backend=backend), expected)
    start = hf.random_init(x_nat, 0.1, alias, generator=torch.Generator().manual_seed(0),
                           backend=backend)
    assert start.shape == x_nat.shape


def test_per_channel_random_start(backend):
    x_nat = normalized_batch((6, 3, 4, 4), seed=6)[2]
    eps = torch.tensor([0.0, 0.1, 0.5]).reshape(3, 1, 1)
    start = hf.random_init(x_nat, eps, clip=None, generator=torch.Generator().manual_seed(1),
                           backend=backend)
    offset = (start - x_nat).abs().amax(dim=(0, 2, 3))
    assert offset[0] == 0 and 0.05 < offset[1] <= 0.1 + 1e-6 and 0.3 < offset[2] <= 0.5 + 1e-6


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_one_dimensional_and_empty_batches(backend, norm):
    x_adv, grad, x_nat = make_batch((7,), seed=7)
    expected = hf.pgd_step(x_adv, grad, x_nat, 0.1, 0.05, norm, backend="reference")
    assert expected.shape == (7,)
    torch.testing.assert_close(hf.pgd_step(x_adv, grad, x_nat, 0.1, 0.05, norm,
                                           backend=backend), expected)
    empty = torch.empty(0, 3, 4)
    assert hf.pgd_step(empty, empty, empty, 0.1, 0.05, norm, backend=backend).shape == (0, 3, 4)
    assert hf.random_init(empty, 0.1, norm, backend=backend).shape == (0, 3, 4)
    assert hf.random_init(x_nat, 0.1, norm, generator=torch.Generator().manual_seed(2),
                          backend=backend).shape == (7,)
    with pytest.raises(ValueError, match="0-d"):
        hf.random_init(torch.tensor(0.5), 0.1, norm, backend=backend)


def test_l2_norms_do_not_overflow_float32(backend):
    """Σg² of gradients near 3e19 passes float32's range; every backend steps correctly."""
    x_adv, grad, x_nat = make_batch((3, 2, 4, 4), seed=8)
    huge = grad * 3e19
    got = hf.pgd_step(x_adv, huge, x_nat, 0.5, 0.1, "l2", clip=None, backend=backend)
    expected = hf.pgd_step(x_adv, grad, x_nat, 0.5, 0.1, "l2", clip=None, backend="reference")
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)


def test_non_finite_policy(backend):
    x_adv, grad, x_nat = make_batch((2, 8), seed=9)
    x_nat[0, 1] = float("nan")
    x_adv[1, 2] = float("nan")
    grad[0, 3] = float("nan")
    for norm in ("linf", "l2"):
        out = hf.pgd_step(x_adv, grad, x_nat, 0.1, 0.05, norm, backend=backend)
        assert out[0, 1].isnan() and out[1, 2].isnan(), norm
        if norm == "linf":
            assert torch.isfinite(out[0, [0, 2, 3, 4]]).all()
    unbounded = hf.pgd_step(x_adv[:, 4:], grad[:, 4:], x_nat[:, 4:], float("inf"), 0.05,
                            clip=None, backend=backend)
    torch.testing.assert_close(unbounded, x_adv[:, 4:] + 0.05 * torch.sign(grad[:, 4:]))
    with pytest.raises(ValueError, match="alpha must be >= 0 and finite"):
        hf.pgd_step(x_adv, grad, x_nat, 0.1, float("inf"), backend=backend)


def test_bad_budgets_and_outs_are_refused(backend):
    x_adv, grad, x_nat = make_batch((3, 3, 2, 2), seed=10)
    cases = [
        (dict(eps=torch.tensor([True, False, True])), TypeError, "real numbers"),
        (dict(eps="0.1"), TypeError, "eps must be a number"),
        (dict(alpha=True), TypeError, "alpha must be a number"),
        (dict(clip="01"), ValueError, "clip must be None or a pair"),
        (dict(clip=(0.0, "1")), TypeError, "clip"),
        (dict(eps=torch.ones(3, 1, 1), norm="l2"), ValueError, "one value per sample"),
        (dict(eps=torch.ones(2, 1, 1)), ValueError, "broadcastable"),
        (dict(clip=(torch.ones(3, 1, 1), torch.zeros(3, 1, 1))), ValueError, "lo <= hi"),
    ]
    for overrides, error, needle in cases:
        kwargs = {**dict(eps=0.1, alpha=0.01, norm="linf", clip=(0.0, 1.0)), **overrides}
        with pytest.raises(error, match=needle):
            hf.pgd_step(x_adv, grad, x_nat, backend=backend, **kwargs)
    storage = torch.cat([x_adv.flatten(), torch.zeros(12)])
    partial = storage[12:].view_as(x_adv)
    with pytest.raises(ValueError, match="overlaps x_adv partially"):
        hf.pgd_step(storage[:36].view_as(x_adv), grad, x_nat, 0.1, 0.01, out=partial,
                    backend=backend)
    with pytest.raises(ValueError, match="must not require grad"):
        hf.pgd_step(x_adv, grad, x_nat, 0.1, 0.01, out=torch.zeros_like(x_adv,
                                                                        requires_grad=True),
                    backend=backend)
    in_place = x_adv.clone()
    expected = hf.pgd_step(x_adv, grad, x_nat, 0.1, 0.01, backend="reference")
    hf.pgd_step(in_place, grad, x_nat, 0.1, 0.01, out=in_place, backend=backend)
    torch.testing.assert_close(in_place, expected)
