"""Attack budgets (ε, α) as the command line reads and every output prints them.

Budgets are in [0, 1] pixel units. :func:`parse_budget` reads ``8/255`` or ``0.031``;
:func:`check_budget` rejects an L∞ budget above 1 (``8`` most likely means ``8/255``);
:func:`format_eps` is the one way heat_fast prints a budget: the number as written when it
is a short decimal (``0.1``), else ``k/255`` for a whole number of 255ths (``8/255``).
"""
from __future__ import annotations

from fractions import Fraction

NORMS = ("linf", "l2")
_WHOLE_255THS_TOLERANCE = 1e-6


class BudgetError(ValueError):
    """A budget that is not a number, is negative or is out of range for its norm."""


def parse_budget(text: str, name: str = "eps") -> float:
    """A number ``0.031`` or a fraction ``8/255`` as a float >= 0 (range: :func:`check_budget`)."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise BudgetError(f"{name}: expected a number like 8/255 or 0.031, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise BudgetError(f"{name} must be >= 0 and finite, got {text}")
    return value


def check_budget(value: float, name: str = "eps", norm: str = "linf") -> float:
    """``value`` if it is a valid ``norm`` budget: L∞ in [0, 1] pixel units, L2 >= 0."""
    if norm not in NORMS:
        raise BudgetError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not value >= 0:
        raise BudgetError(f"{name} must be >= 0, got {value:g}")
    if norm == "linf" and value > 1:
        raise BudgetError(f"{name} is in [0, 1] pixel units, got {value:g} "
                          f"(did you mean {value:g}/255?)")
    return value


def format_eps(value: float) -> str:
    """A short decimal when one is exact (``0.1``, ``0.031``, ``2``), else ``k/255`` for a
    whole number of 255ths (``8/255``), else 4 significant digits."""
    short = f"{value:.3g}"
    if float(short) == value:
        return short
    scaled = value * 255
    if abs(scaled - round(scaled)) <= _WHOLE_255THS_TOLERANCE * max(1.0, scaled):
        return f"{round(scaled)}/255"
    return f"{value:.4g}"
