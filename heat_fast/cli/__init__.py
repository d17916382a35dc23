"""The ``heat-fast`` command line: ``train``, ``eval``, ``quickstart``, ``presets`` and ``info``.

Each subcommand lives in its own module exposing ``main(argv: list[str]) -> int``; every one
exits 2 with a one-line message for bad input, and 130 when interrupted (Ctrl-C).
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

SUBCOMMANDS = {
    "train": ("heat_fast.cli.train", "adversarially train a model (PGD-AT, ALP, TRADES, FreeAT, FastAT; HE on or off)"),
    "eval": ("heat_fast.cli.eval", "evaluate checkpoints under clean, PGD, APGD and worst-case attacks"),
    "quickstart": ("heat_fast.cli.quickstart", "train PGD-AT and PGD-AT+HE on digits and compare their robustness"),
    "presets": ("heat_fast.cli.presets", "list the published recipes and every value they set"),
    "info": ("heat_fast.cli.info", "print versions, the build and what each backend supports"),
}


def _usage() -> str:
    lines = ["usage: heat-fast [--version] {" + ",".join(SUBCOMMANDS) + "} [options]", "",
             "subcommands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines.append("\nRun 'heat-fast SUBCOMMAND --help' for a subcommand's options.")
    return "\n".join(lines)


def _version() -> str:
    import platform

    import torch

    import heat_fast
    return f"heat-fast {heat_fast.__version__} (torch {torch.__version__}, python {platform.python_version()})"


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``heat-fast`` and ``python -m heat_fast``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(_usage(), file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        print(_version())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"heat-fast: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(SUBCOMMANDS[name][0])
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:  # before a subcommand's own handler, e.g. while loading data
        print(f"\nheat-fast {name}: interrupted", file=sys.stderr)
        return 130
