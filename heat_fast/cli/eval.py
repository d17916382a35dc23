"""``heat-fast eval CKPT [CKPT ...]``: robust accuracy of checkpoints side by side.

Each checkpoint (a ``heat-fast train`` run directory or its ``last.pt``) is evaluated on
the first ``--n-examples`` test images of its own dataset under every attack in
``--attacks``, each on the examples still robust after the attacks before it, plus the
per-example worst case over all of them. The default attacks are heat_fast's equivalent of
AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square) after a PGD-20 first pass;
``--quick`` is a cheap set for monitoring training. Prints one table; with
``--out`` writes ``eval.json`` and, with ``--eps-sweep``, ``eps_sweep.png``. Exit status 2
for bad arguments or a missing, corrupt or mismatched checkpoint, with a one-line message.
"""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from typing import List, Optional

import torch

from heat_fast.attacks import AutoAttackUnavailableError
from heat_fast.data import DatasetError
from heat_fast.evaluation import (DEFAULT_ATTACKS, QUICK_ATTACKS, CheckpointError, Settings,
                                  WORST, evaluate_checkpoints, parse_attack_list, table,
                                  write_outputs)


def parse_eps(text: str) -> float:
    """A radius as a float ("0.03") or a fraction ("8/255"); must be >= 0."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number like 0.031 or 8/255, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"eps must be >= 0, got {text}")
    return value


def parse_eps_list(text: str) -> List[float]:
    return [parse_eps(part) for part in text.split(",") if part.strip()]


def parse_attacks(text: str) -> List[str]:
    """The attack list, with clean first and the worst case always last."""
    try:
        return parse_attack_list(text.split(",") + [WORST])
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heat-fast eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="run directories or .pt checkpoint files")
    attack_set = parser.add_mutually_exclusive_group()
    attack_set.add_argument("--attacks", type=parse_attacks, default=list(DEFAULT_ATTACKS),
                            help="comma list, e.g. clean,fgsm,pgd20-ce,pgd20-cw,pgd50-dlr-r5,mim10,"
                                 "apgd-ce,apgd-dlr,apgd-t,fab-t,square,autoattack,worst-case "
                                 "(default, AutoAttack-standard equivalent: %(default)s)")
    attack_set.add_argument("--quick", dest="attacks", action="store_const",
                            const=list(QUICK_ATTACKS),
                            help=f"cheap set for monitoring training: {','.join(QUICK_ATTACKS)}")
    parser.add_argument("--independent", action="store_true",
                        help="run every attack on every example (each row its own accuracy) "
                             "instead of only on the examples still robust")
    parser.add_argument("--eps", type=parse_eps, default=None,
                        help="L-inf radius, e.g. 8/255 (default: each checkpoint's training eps)")
    parser.add_argument("--n-examples", type=positive_int, default=1000,
                        help="first N test images (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="attack random starts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", choices=("auto", "reference", "triton", "native"),
                        help="backend of the pgd_step/random_init ops")
    parser.add_argument("--data-dir", default=None, help="dataset directory (cifar10/100, imagenet)")
    parser.add_argument("--out", default=None, help="directory for eval.json and eps_sweep.png")
    parser.add_argument("--eps-sweep", type=parse_eps_list, default=[],
                        help="comma list of radii, e.g. 0,2/255,4/255,8/255 (needs --out)")
    parser.add_argument("--sweep-attacks", type=parse_attacks, default=None,
                        help="attacks whose worst case the sweep plots (default: --attacks)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(attacks=args.attacks, eps=args.eps, n_examples=args.n_examples,
                    batch_size=args.batch_size, seed=args.seed, device=args.device,
                    backend=args.backend, data_dir=args.data_dir, eps_sweep=args.eps_sweep,
                    sweep_attacks=args.sweep_attacks, independent=args.independent,
                    progress=not args.no_progress)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.eps_sweep and not args.out:
        parser.error("--eps-sweep writes a plot: give --out DIR")
    settings = settings_from(args)
    try:
        reports = evaluate_checkpoints(args.checkpoints, settings)
    except (CheckpointError, DatasetError, AutoAttackUnavailableError) as error:
        print(f"heat-fast eval: error: {error}", file=sys.stderr)
        return 2
    print(table(reports))
    if args.out:
        for path in write_outputs(reports, settings, args.out):
            print(f"wrote {path}")
    return 0
