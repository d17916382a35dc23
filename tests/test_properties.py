"""Property-based tests (hypothesis): every backend agrees with the reference over random shapes,
dtypes, strides and budgets — pgd_step / pgd_delta_step, random_init, he_cross_entropy and
cos_margin_cross_entropy. Example counts are bounded so the file runs in CI in seconds;
HEAT_FAST_EXAMPLES=300 runs more (all passed with 300 when written)."""
import os

import pytest
import torch

import heat_fast as hf
from conftest import require_backend
from numerics import UNIT_ROUNDOFF, assert_error_ratio
from test_he_loss import loss_and_grads
from test_pgd import assert_step_matches

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BACKENDS = ("triton", "native")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The fixtures here (the backend's name, an environment override) hold no per-example state.
SETTINGS = settings(max_examples=int(os.environ.get("HEAT_FAST_EXAMPLES", 20)), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(params=BACKENDS)
def backend(request):
    require_backend(request.param)
    return request.param


@st.composite
def step_cases(draw):
    batch = draw(st.integers(1, 4))
    rest = draw(st.lists(st.integers(1, 6), min_size=0, max_size=3))
    shape = (batch, *rest)
    norm = draw(st.sampled_from(["linf", "l2"]))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=gen)
    x_adv = (x_nat + 0.1 * (2 * torch.rand(shape, generator=gen) - 1)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen)
    dtype = draw(st.sampled_from(DTYPES))
    eps_kind = draw(st.sampled_from(["number", "per-sample"] +
                                    (["per-channel"] if rest and norm == "linf" else [])))
    if eps_kind == "number":
        eps = draw(st.floats(0.0, 0.5))
    elif eps_kind == "per-sample":
        eps = 0.5 * torch.rand(batch, generator=gen)
    else:
        eps = 0.5 * torch.rand((1, rest[0]) + (1,) * (len(rest) - 1), generator=gen)
    alpha = draw(st.floats(0.0, 0.3))
    transpose = len(shape) >= 3 and draw(st.booleans())
    tensors = [t.to(dtype) for t in (x_adv, grad, x_nat)]
    if transpose:
        tensors = [t.transpose(1, 2) for t in tensors]
        if isinstance(eps, torch.Tensor) and eps_kind == "per-channel":
            eps = eps.expand(1, *rest).transpose(1, 2).contiguous()[:, :, :1]
    return tensors, eps, alpha, norm, draw(st.booleans())


@SETTINGS
@given(case=step_cases())
def test_projected_step(backend, case):
    (x_adv, grad, x_nat), eps, alpha, norm, delta = case
    fn = hf.pgd_delta_step if delta else hf.pgd_step
    start = (x_adv - x_nat) if delta else x_adv
    expected = fn(start, grad, x_nat, eps, alpha, norm, backend="reference")
    got = fn(start, grad, x_nat, eps, alpha, norm, backend=backend)
    assert_step_matches(got, expected, x_nat, eps)


@SETTINGS
@given(case=step_cases(), seed=st.integers(0, 1000))
def test_random_start_stays_in_the_ball_and_box(backend, case, seed):
    (_, _, x_nat), eps, _, norm, _ = case
    start = hf.random_init(x_nat, eps, norm, generator=torch.Generator().manual_seed(seed),
                           backend=backend)
    again = hf.random_init(x_nat, eps, norm, generator=torch.Generator().manual_seed(seed),
                           backend=backend)
    assert torch.equal(start, again) and start.dtype == x_nat.dtype
    offset = (start.float() - x_nat.float()).reshape(x_nat.shape[0], -1)
    if isinstance(eps, torch.Tensor) and eps.dim() == 1 and len(eps) == x_nat.shape[0]:
        eps = eps.reshape((-1,) + (1,) * (x_nat.dim() - 1))  # the documented per-sample form
    bound = (torch.as_tensor(eps, dtype=torch.float32) + 0 * x_nat.float()).reshape(
        x_nat.shape[0], -1)
    slack = 2e-2 if x_nat.dtype != torch.float32 else 1e-6
    if norm == "linf":
        assert (offset.abs() <= bound + slack).all()
    else:
        assert (offset.norm(dim=1) <= bound[:, 0] * (1 + 1e-5) + slack * offset.shape[1]).all()
    assert start.min() >= 0 and start.max() <= 1


@st.composite
def he_cases(draw):
    batch, classes = draw(st.integers(1, 9)), draw(st.integers(2, 40))
    dim = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    dtype = draw(st.sampled_from(DTYPES))
    x = torch.randn(batch, dim, generator=gen).to(dtype)
    w = torch.randn(classes, dim, generator=gen).to(dtype)
    y = torch.randint(0, classes, (batch,), generator=gen)
    options = dict(scale=draw(st.sampled_from([1.0, 15.0, 64.0])),
                   margin=draw(st.sampled_from([0.0, 0.2, 0.5])),
                   reduction=draw(st.sampled_from(["mean", "sum", "none"])),
                   label_smoothing=draw(st.sampled_from([0.0, 0.1])))
    return x, w, y, options


def loss_floor(options) -> float:
    """The loss is a function of s·cos: a float32 rounding of cos moves it by up to s·(1 + m)·u
    (a reference that lands on exact cosines, e.g. x̂ = ±1 for D = 1, shows no such error)."""
    return 8 * UNIT_ROUNDOFF[torch.float32] * options["scale"] * (1 + options["margin"])


@SETTINGS
@given(case=he_cases())
def test_he_cross_entropy(backend, case):
    x, w, y, options = case
    truth = loss_and_grads(x.double(), w.double(), y, "reference", **options)
    ref = loss_and_grads(x, w, y, "reference", **options)
    fast = loss_and_grads(x, w, y, backend, **options)
    scale = max(1.0, truth[0].abs().max().item()) if options["reduction"] == "sum" else 1.0
    for name, f, r, t, floor in zip(("loss", "d_features", "d_weight"), fast, ref, truth,
                                    (loss_floor(options) * scale * len(y), None, None)):
        assert_error_ratio(f, r, t, floor=floor, what=f"{backend} {name} {x.dtype}")


@SETTINGS
@given(case=he_cases())
def test_cos_margin_cross_entropy(backend, case):
    x, w, y, options = case
    cos = hf.he_logits(x.float(), w.float()).to(x.dtype)
    truth = hf.cos_margin_cross_entropy(cos.double(), y, backend="reference", **options)
    ref = hf.cos_margin_cross_entropy(cos, y, backend="reference", **options)
    got = hf.cos_margin_cross_entropy(cos, y, backend=backend, **options)
    assert_error_ratio(got, ref, truth, floor=loss_floor(options) * len(y),
                       what=f"{backend} cos loss")
