"""What every heat-fast subcommand shares: budget and count arguments, ``--threads``,
``--json`` / ``--no-progress``, where human-readable lines go, and one-line errors.

With ``--json`` stdout carries exactly one JSON document and every human-readable line
(headers, plans, epoch lines, notes, warnings) goes to stderr; progress always goes to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Iterator, Optional, TextIO

from heat_fast._files import strict_json
from heat_fast.budget import BudgetError, parse_budget


def budget(text: str) -> float:
    """argparse type: a budget ``8/255`` or ``0.031`` (range checked later, with the norm)."""
    try:
        return parse_budget(text, "budget")
    except BudgetError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def seed(text: str) -> int:
    """argparse type: a seed, an integer in [0, 2**63)."""
    from heat_fast.training.config import SEED_LIMIT

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {text}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser, default_suppressed: bool = False) -> None:
    """``--threads``, ``--json`` and ``--no-progress``."""
    group = parser.add_argument_group("threads and output")
    extra = {"default": None} if default_suppressed else {}
    group.add_argument("--threads", type=positive_int, metavar="N", **extra,
                       help="torch CPU threads (default: OMP_NUM_THREADS if set, else the usable "
                            "CPUs that other processes leave free; recorded in the outputs)")
    group.add_argument("--json", action="store_true", default=False,
                       help="print one JSON document on stdout; human-readable lines go to stderr")
    group.add_argument("--no-progress", action="store_true", default=False,
                       help="no progress display (default: a bar on a terminal, else a line "
                            "every 10 s, on stderr)")


def human_stream(as_json: bool) -> TextIO:
    """Where human-readable lines go: stderr with ``--json``, else stdout."""
    return sys.stderr if as_json else sys.stdout


def say(stream: TextIO, text: str) -> None:
    print(text, file=stream, flush=True)


def print_json(payload: object) -> None:
    """``payload`` as standard JSON (null for NaN / inf) on stdout."""
    print(strict_json(payload, indent=2), flush=True)


def error(prog: str, message: object) -> int:
    """Print ``prog: error: message`` (one line) on stderr; return exit status 2."""
    text = str(message).splitlines()[0] if str(message) else type(message).__name__
    print(f"{prog}: error: {text}", file=sys.stderr, flush=True)
    return 2


@contextlib.contextmanager
def threads_for(requested: Optional[int], stream: TextIO, fixed: Optional[int] = None,
                fixed_source: str = "") -> Iterator[int]:
    """Choose (see :func:`heat_fast.threads.choose_threads`) or take ``fixed`` thread count,
    say which and why on ``stream`` (with any warning on stderr), use it inside the block."""
    from heat_fast.threads import ThreadChoice, choose_threads, using_threads

    choice = ThreadChoice(fixed, fixed_source) if fixed is not None and requested is None \
        else choose_threads(requested)
    say(stream, choice.describe())
    if choice.warning:
        print(f"warning: {choice.warning}", file=sys.stderr, flush=True)
    with using_threads(choice.count):
        yield choice.count
