"""``heat-fast quickstart``: train PGD-AT and PGD-AT+HE on digits and compare them honestly.

Trains both with ``heat-fast train`` (small CNN, ε = 0.1, PGD-10 crafting), then evaluates
each on the first test images with ``heat-fast eval``'s default attacks (PGD-20 on CE and CW,
then the AutoAttack-standard equivalent APGD-CE, APGD-T, FAB-T, Square) and the
per-example worst case, prints the table side by side with the seconds per training epoch,
and writes OUT/eval.json and OUT/eps_sweep.png. The defaults take a few minutes on a
2-core CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from heat_fast.cli import train as train_cli
from heat_fast.cli.eval import positive_int
from heat_fast.evaluation import (DEFAULT_ATTACKS, CheckpointError, Settings, evaluate_checkpoints,
                                  table, write_outputs)

RUNS = (("pgd-at", False), ("pgd-at-he", True))
SWEEP_EPS = (0.0, 0.05, 0.1, 0.15, 0.2)
SWEEP_ATTACKS = ("pgd20-cw", "apgd-dlr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heat-fast quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quickstart", help="output folder (default: %(default)s)")
    parser.add_argument("--epochs", type=positive_int, default=8, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="training and attack seed")
    parser.add_argument("--n-examples", type=positive_int, default=200,
                        help="test images evaluated (default: %(default)s of 360)")
    parser.add_argument("--steps-per-epoch", type=positive_int, default=None,
                        help="cap training batches per epoch (smoke runs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def train_argv(args: argparse.Namespace, name: str, he: bool) -> List[str]:
    argv = ["--framework", "pgd-at", "--he" if he else "--no-he", "--dataset", "digits",
            "--epochs", str(args.epochs), "--seed", str(args.seed), "--device", args.device,
            "--eval-examples", str(args.n_examples), "--out", str(Path(args.out) / name),
            "--overwrite"]
    if args.steps_per_epoch:
        argv += ["--max-steps-per-epoch", str(args.steps_per_epoch)]
    return argv + (["--no-progress"] if args.no_progress else [])


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    began = time.perf_counter()
    for name, he in RUNS:
        print(f"== training {name} on digits ({args.epochs} epochs)", flush=True)
        code = train_cli.main(train_argv(args, name, he))
        if code:
            return code
    settings = Settings(attacks=DEFAULT_ATTACKS, n_examples=args.n_examples, seed=args.seed,
                        device=args.device, eps_sweep=SWEEP_EPS, sweep_attacks=SWEEP_ATTACKS,
                        progress=not args.no_progress)
    print(f"== evaluating on {args.n_examples} test images", flush=True)
    try:
        reports = evaluate_checkpoints([Path(args.out) / name for name, _ in RUNS], settings)
    except CheckpointError as error:
        print(f"heat-fast quickstart: error: {error}", file=sys.stderr)
        return 2
    print(table(reports))
    for path in write_outputs(reports, settings, Path(args.out)):
        print(f"wrote {path}")
    print(f"quickstart finished in {time.perf_counter() - began:.0f} s")
    return 0
