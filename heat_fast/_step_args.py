"""Arguments of the projected step and random start (SPEC §2.2), shared by every backend.

A *budget* (``eps``, ``alpha``, either bound of ``clip``) is a Python number or a tensor that is
0-d (one value), ``(B,)`` (one value per sample, also when x itself is 1-D), or broadcastable
to x's shape, e.g. ``(C, 1, 1)`` per channel for attacks in normalized input space.
:func:`budget` returns it as float32: a number or a 0-d tensor becomes a 0-d *CPU* tensor whose
value the kernels read on the host (no device work, no synchronisation), any other tensor a
tensor on x's device whose shape broadcasts to x's. Values are checked on the host for CPU
tensors and with asynchronous device asserts elsewhere.

Non-finite policy (every backend): a NaN in x_adv or x_nat gives NaN in that output element; a
NaN gradient element gives no step (L∞), and a non-finite one counts as 0 in the L2 direction;
eps may be +inf (no projection), alpha must be finite, clip bounds may be ±inf (no box).
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple, Union

import torch

Budget = Union[float, int, torch.Tensor]
Clip = Optional[Sequence[Budget]]
NORM_ALIASES = {"linf": "linf", "l_inf": "linf", "inf": "linf", "l2": "l2", "l_2": "l2"}


def _host_checkable(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def canonical_norm(norm: str, argument: str = "norm") -> str:
    """'linf' or 'l2' from any of their spellings ('Linf', 'l_inf', 'inf', 'L2', 'l_2');
    ValueError naming ``argument`` otherwise."""
    name = norm.lower() if isinstance(norm, str) else None
    if name not in NORM_ALIASES:
        raise ValueError(f"{argument} must be 'linf' or 'l2' (or 'Linf', 'l_inf', 'L2', 'l_2'), "
                         f"got {norm!r}")
    return NORM_ALIASES[name]


def _number(name: str, value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    return float(value)


def _check_values(name: str, t: torch.Tensor, minimum: Optional[float], finite: bool) -> None:
    """Asserts t ≥ minimum (NaN fails) and, with ``finite``, no ±inf."""
    if _host_checkable(t):
        bad = torch.zeros((), dtype=torch.bool)
        if minimum is not None:
            bad |= ~(t >= minimum).all()
        if finite:
            bad |= ~torch.isfinite(t).all()
        if bool(bad):
            shown = t.tolist() if t.numel() <= 8 else f"a tensor of shape {tuple(t.shape)}"
            raise ValueError(f"{name} must be {_rule(minimum, finite)}, got {shown}")
        return
    ok = torch.ones((), dtype=torch.bool, device=t.device)
    if minimum is not None:
        ok = ok & (t >= minimum).all()
    if finite:
        ok = ok & torch.isfinite(t).all()
    torch._assert_async(ok, f"{name} must be {_rule(minimum, finite)}")


def _rule(minimum: Optional[float], finite: bool) -> str:
    parts = [f">= {minimum:g}"] if minimum is not None else []
    if finite:
        parts.append("finite")
    return " and ".join(parts) or "a number"


def per_sample_form(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) tensor as (B, 1, ..., 1) so that it broadcasts per sample against like."""
    if value.dim() == 1 and like.dim() >= 1 and value.shape[0] == like.shape[0]:
        return value.reshape((-1,) + (1,) * (like.dim() - 1))
    return value


def budget(name: str, value: Budget, like: torch.Tensor, minimum: Optional[float] = 0.0,
           finite: bool = False, per_sample_only: bool = False) -> torch.Tensor:
    """``value`` as a float32 budget for x = ``like`` (module docstring)."""
    what = "a number or a tensor broadcastable to x (0-d, (B,) or e.g. (C, 1, 1))"
    if not isinstance(value, torch.Tensor):
        number = _number(name, value, what)
        if minimum is not None and not number >= minimum or finite and abs(number) == float("inf"):
            raise ValueError(f"{name} must be {_rule(minimum, finite)}, got {value}")
        return torch.tensor(number, dtype=torch.float32)
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must hold real numbers, got a {value.dtype} tensor")
    result = value.detach().to(torch.float32)
    if value.dim() > 0 or value.device.type != "cpu":
        if value.device != like.device:
            raise ValueError(f"{name} must be on {like.device} like x, got {value.device}")
        result = per_sample_form(result, like)
        try:
            broadcast = result.expand(like.shape)
        except RuntimeError:
            raise ValueError(f"{name} must be {what} for x of shape {tuple(like.shape)}, "
                             f"got shape {tuple(value.shape)}") from None
        if per_sample_only and any(stride != 0 and size > 1 for stride, size in
                                   zip(broadcast.stride()[1:], broadcast.shape[1:])):
            raise ValueError(f"{name} must be one value per sample for norm='l2' (a number, "
                             f"0-d or ({like.shape[0]},)), got shape {tuple(value.shape)}")
    _check_values(name, result, minimum, finite)
    return result


def box(clip: Clip, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The clip box as two budgets (lo, hi); None means no box (−inf, +inf)."""
    if clip is None:
        return (torch.tensor(float("-inf")), torch.tensor(float("inf")))
    if isinstance(clip, (str, bytes, torch.Tensor)) or not isinstance(clip, Sequence) \
            or len(clip) != 2:
        raise ValueError(f"clip must be None or a pair (lo, hi) of numbers or tensors, "
                         f"got {clip!r}")
    lo, hi = (budget(f"clip[{i}]", bound, like, minimum=None) for i, bound in enumerate(clip))
    if lo.dim() == 0 and hi.dim() == 0 and lo.device.type == hi.device.type == "cpu":
        if not float(lo) <= float(hi):
            raise ValueError(f"clip must satisfy lo <= hi, got {clip!r}")
    else:
        ok = (lo.to(like.device) <= hi.to(like.device)).all()
        if _host_checkable(like):
            if not bool(ok):
                raise ValueError("clip must satisfy lo <= hi everywhere")
        else:
            torch._assert_async(ok, "clip must satisfy lo <= hi everywhere")
    return lo, hi


def check_images(x_adv: torch.Tensor, grad: torch.Tensor, x_nat: torch.Tensor,
                 first: str = "x_adv") -> None:
    """x_adv (or delta), grad and x_nat: floating tensors of one shape (B, ...) on one device."""
    from heat_fast._checks import check_float, check_same_device

    for name, t in ((first, x_adv), ("grad", grad), ("x_nat", x_nat)):
        check_float(name, t)
    if x_adv.dim() < 1:
        raise ValueError(f"{first} must have shape (B, ...), got a 0-d tensor")
    for name, t in (("grad", grad), ("x_nat", x_nat)):
        if t.shape != x_adv.shape:
            raise ValueError(f"{name} must have the shape of {first} {tuple(x_adv.shape)}, "
                             f"got {tuple(t.shape)}")
    check_same_device(**{first: x_adv, "grad": grad, "x_nat": x_nat})


def _extent(t: torch.Tensor) -> Tuple[int, int]:
    """[first, last] byte of t's elements in its storage."""
    size = t.element_size()
    first = t.storage_offset() * size
    last = first + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) * size + size - 1
    return first, last


def check_out(out: torch.Tensor, like: torch.Tensor, *inputs: Tuple[str, torch.Tensor]) -> None:
    """out matches like in shape and dtype, records no gradient, and either is an input itself
    (same storage, offset and strides: safe in place) or shares no memory with any input."""
    from heat_fast._checks import check_float, check_same_device

    check_float("out", out)
    if out.shape != like.shape or out.dtype != like.dtype:
        raise ValueError(f"out must match the input in shape {tuple(like.shape)} and dtype "
                         f"{like.dtype}, got {tuple(out.shape)} {out.dtype}")
    check_same_device(out=out, x=like)
    if out.requires_grad:
        raise ValueError("out must not require grad: the op writes it in place, outside autograd")
    if out.numel() == 0:
        return
    out_first, out_last = _extent(out)
    for name, t in inputs:
        if t.numel() == 0 or t.untyped_storage().data_ptr() != out.untyped_storage().data_ptr():
            continue
        same = (t.storage_offset() == out.storage_offset() and t.stride() == out.stride()
                and t.dtype == out.dtype)
        first, last = _extent(t)
        if not same and first <= out_last and out_first <= last:
            raise ValueError(f"out overlaps {name} partially: in place, pass {name} itself as out")


def step_arguments(start: torch.Tensor, grad: torch.Tensor, x_nat: torch.Tensor, eps: Budget,
                   alpha: Budget, norm: str, clip: Clip, out: Optional[torch.Tensor],
                   first: str) -> Tuple[str, torch.Tensor, torch.Tensor, torch.Tensor,
                                        torch.Tensor]:
    """Checks a projected step's arguments; returns (norm, eps, alpha, lo, hi) as budgets."""
    norm = canonical_norm(norm)
    l2 = norm == "l2"
    eps_t = budget("eps", eps, start, per_sample_only=l2)
    alpha_t = budget("alpha", alpha, start, finite=True, per_sample_only=l2)
    lo, hi = box(clip, start)
    if out is not None:
        check_out(out, start, (first, start), ("grad", grad), ("x_nat", x_nat))
    return norm, eps_t, alpha_t, lo, hi
