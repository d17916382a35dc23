"""``heat-fast presets [NAME ...]``: the published recipes and every value each one sets.

Prints each preset as a TOML table (``[name]`` then its settings; ε and α as ``k/255``), or
one JSON object with ``--json``. A preset's values are the defaults of
``heat-fast train --preset NAME``; flags and ``--config`` files override them.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import List

from heat_fast.cli.common import error, print_json
from heat_fast.training.config import TrainConfig, to_toml
from heat_fast.training.presets import DESCRIPTIONS, PRESET_NAMES, preset

PROG = "heat-fast presets"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"presets to show (default: all): {', '.join(PRESET_NAMES)}")
    parser.add_argument("--json", action="store_true", help="one JSON object {name: values}")
    return parser


def main(argv: List[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    unknown = [n for n in args.names if n not in PRESET_NAMES]
    if unknown:
        return error(PROG, f"unknown preset(s) {', '.join(unknown)}; valid names: {', '.join(PRESET_NAMES)}")
    names = args.names or list(PRESET_NAMES)
    order = [f.name for f in dataclasses.fields(TrainConfig)]
    values = {name: {k: preset(name)[k] for k in order if k in preset(name) and k != "preset"}
              for name in names}
    if args.json:
        print_json(values)
        return 0
    blocks = [f"# {DESCRIPTIONS[name]}\n[{name}]\n{to_toml(values[name])}" for name in names]
    print("\n".join(blocks), end="")
    return 0
