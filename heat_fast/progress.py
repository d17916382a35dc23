"""Progress of a whole run: phases, a whole-run ETA, bars on a terminal, plain lines elsewhere.

A :class:`Tracker` knows the planned work of a run in *units* (one unit ≈ one forward and
backward pass of one example: :func:`attack_passes` and the training cost model count them)
and measures how fast finished units arrive, so its ETA covers every phase still to come:
training steps, the per-epoch evaluation, each attack of an evaluation. Code that does the
work opens a :func:`bar` for its phase and calls ``update``; the bar reports to the tracker
entered with ``with tracker:``, or to a tracker of its own when none is active.

Output goes to stderr by default: a tqdm bar when that stream is a terminal, otherwise plain
lines without carriage returns, one after the first finished step (so a slow run shows its
ETA early) and then at most one every ``interval`` seconds.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Dict, List, Optional, TextIO

MODES = ("auto", "bar", "lines", "off")
DEFAULT_INTERVAL = 10.0
_ACTIVE: List["Tracker"] = []


def format_duration(seconds: Optional[float]) -> str:
    """``1:02:03`` (h:mm:ss), ``0:42``, ``3d 4:05:06``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}" if hours or days else f"{minutes}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def attack_passes(name: str) -> int:
    """Forward/backward passes per example of evaluation attack ``name`` (a cost estimate:
    steps × restarts, plus the prediction on its output)."""
    from heat_fast.attacks.registry import parse_name

    if name in ("clean", "worst-case"):
        return 1 if name == "clean" else 0
    spec = parse_name(name)
    if spec.family == "autoattack":  # APGD-CE, APGD-T (9 targets), FAB-T, Square: ~100 steps each
        return 100 * (1 + 9 + 9) + 5000
    return max(1, spec.steps) * spec.restarts + 1


class Tracker:
    """A run's planned ``total_units`` and its progress (see the module docstring).

    ``unit_costs`` maps a bar ``kind`` to its units per step for bars whose code does not
    know its own cost (e.g. ``{"train": batch × passes per step}``). ``mode``: ``auto``
    (bar on a terminal, lines elsewhere), ``bar``, ``lines`` or ``off``.
    """

    def __init__(self, total_units: float, mode: str = "auto", stream: Optional[TextIO] = None,
                 interval: float = DEFAULT_INTERVAL, unit_costs: Optional[Dict[str, float]] = None,
                 clock: Callable[[], float] = time.monotonic):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode, self.interval, self.clock = mode, float(interval), clock
        self.total, self.done = max(float(total_units), 0.0), 0.0
        self.unit_costs = dict(unit_costs or {})
        self.started = clock()
        self._last_line: Optional[float] = None

    def __enter__(self) -> "Tracker":
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def elapsed(self) -> float:
        return self.clock() - self.started

    def eta(self) -> Optional[float]:
        """Seconds left at the rate measured so far; None before any unit finished."""
        elapsed = self.elapsed()
        if self.done <= 0 or elapsed <= 0:
            return None
        return max(self.total - self.done, 0.0) * elapsed / self.done

    def status(self) -> str:
        """``run 41%, 0:17 elapsed, ETA 0:25``."""
        return (f"run {100 * self.fraction:.0f}%, {format_duration(self.elapsed())} elapsed, "
                f"ETA {format_duration(self.eta())}")

    def note(self, text: str) -> None:
        """Print a line (e.g. the plan) without breaking a bar; nothing in ``off`` mode."""
        if self.mode == "off":
            return
        if self.mode == "bar":
            from tqdm.auto import tqdm
            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def bar(self, total: Optional[int], desc: str, kind: str = "",
            units_per_step: Optional[float] = None) -> "Bar":
        """A phase of ``total`` steps; each step is worth ``units_per_step`` units (default:
        ``unit_costs[kind]``, or 0: the phase then moves its own bar but not the run's)."""
        if units_per_step is None:
            units_per_step = self.unit_costs.get(kind, 0.0)
        return Bar(self, total, desc, units_per_step)

    def _advance(self, units: float) -> None:
        self.done += units
        self.total = max(self.total, self.done)

    def _line_due(self) -> bool:
        now = self.clock()
        if self._last_line is None or now - self._last_line >= self.interval:
            self._last_line = now
            return True
        return False


class Bar:
    """One phase's progress, tqdm-like: :meth:`update`, :meth:`set_postfix`,
    :meth:`set_description`, :meth:`close`; also a context manager."""

    def __init__(self, tracker: Tracker, total: Optional[int], desc: str,
                 units_per_step: float, own_tracker: bool = False):
        self.tracker, self.total, self.desc, self.detail = tracker, total, desc, ""
        self.units_per_step, self.own_tracker = float(units_per_step), own_tracker
        self.n, self.postfix = 0, ""
        self._tqdm = None
        if tracker.mode == "bar":
            from tqdm.auto import tqdm
            self._tqdm = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True,
                              file=tracker.stream)

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def label(self) -> str:
        return f"{self.desc} | {self.detail}" if self.detail else self.desc

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._tqdm is not None:
            self._tqdm.set_description_str(self.label, refresh=False)

    def set_postfix(self, **values) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1, units: Optional[float] = None, detail: Optional[str] = None) -> None:
        """``n`` more steps done, worth ``units`` (default n × units_per_step); ``detail``
        names what just ran (e.g. the attack and its ε)."""
        self.n += n
        if self.own_tracker or units is None:
            units = n * self.units_per_step
        self.tracker._advance(units)
        if detail is not None:
            self.detail = detail
            self.set_description(self.desc)
        run = "" if self.own_tracker else self.tracker.status()
        if self._tqdm is not None:
            self._tqdm.set_postfix_str("  ".join(s for s in (self.postfix, run) if s), refresh=False)
            self._tqdm.update(n)
        elif self.tracker.mode == "lines" and self.tracker._line_due():
            count = f"{self.n}/{self.total}" if self.total else str(self.n)
            percent = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
            tail = (f"ETA {format_duration(self.tracker.eta())}" if self.own_tracker else run)
            parts = [f"{self.label} {count}{percent}", self.postfix, tail]
            self.tracker.note("  ".join(p for p in parts if p))

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None


class _NullBar:
    """A bar that shows nothing (progress switched off)."""

    def __enter__(self) -> "_NullBar":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1, units: Optional[float] = None, detail: Optional[str] = None) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass


def active() -> Optional[Tracker]:
    """The innermost tracker entered with ``with tracker:``, or None."""
    return _ACTIVE[-1] if _ACTIVE else None


def bar(total: Optional[int], desc: str, kind: str = "", units_per_step: Optional[float] = None,
        enabled: bool = True, stream: Optional[TextIO] = None):
    """A phase bar of the active tracker, or of a tracker of its own (ETA of this phase only)
    when none is active; a bar that shows nothing when not ``enabled`` or the tracker is off."""
    tracker = active()
    if not enabled or (tracker is not None and tracker.mode == "off"):
        return _NullBar()
    if tracker is not None:
        return tracker.bar(total, desc, kind, units_per_step)
    own = Tracker(total or 0, stream=stream)
    return Bar(own, total, desc, 1.0, own_tracker=True)
