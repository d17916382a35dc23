"""``heat-fast quickstart``: train PGD-AT and PGD-AT+HE on digits and compare them honestly.

Trains both as ``heat-fast train`` would (small CNN, eps 0.1, PGD-10 crafting), then
evaluates each on the first test images with ``heat-fast eval``'s default attacks (PGD-20 on
CE and CW, then the AutoAttack-standard equivalent APGD-CE, APGD-T, FAB-T, Square) and the
per-example worst case, prints the table side by side with the seconds per training epoch,
and writes OUT/eval.json, OUT/eps_sweep.png and both runs (OUT/pgd-at, OUT/pgd-at-he, each
with its training_curves.png). Refuses an existing non-empty OUT unless ``--overwrite``, and
an OUT another run is using (it is locked for the life of the quickstart).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from heat_fast import progress
from heat_fast._output_folder import LOCK_NAME, OutputFolderError, claim
from heat_fast.cli import train as train_cli
from heat_fast.cli.common import (add_common_arguments, error, human_stream, positive_int,
                                  print_json, say, seed, threads_for)
from heat_fast.cli.eval import units_per_example
from heat_fast.data import load_dataset
from heat_fast.evaluation import (DEFAULT_ATTACKS, CheckpointError, Settings, evaluate_checkpoints,
                                  table, write_outputs)
from heat_fast.evaluation.session import eval_payload

PROG = "heat-fast quickstart"
RUNS = (("pgd-at", False), ("pgd-at-he", True))
SWEEP_EPS = (0.0, 0.05, 0.1, 0.15, 0.2)
SWEEP_ATTACKS = ("pgd20-cw", "apgd-dlr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quickstart", help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what an earlier quickstart left in --out")
    parser.add_argument("--epochs", type=positive_int, default=8, help="default: %(default)s")
    parser.add_argument("--seed", type=seed, default=0, help="training and attack seed")
    parser.add_argument("--n-examples", type=positive_int, default=200,
                        help="test images evaluated (default: %(default)s of 360)")
    parser.add_argument("--steps-per-epoch", type=positive_int, default=None,
                        help="cap training batches per epoch (smoke runs)")
    parser.add_argument("--device", default="cpu")
    add_common_arguments(parser, default_suppressed=True)
    return parser


def train_argv(args: argparse.Namespace, name: str, he: bool) -> List[str]:
    argv = ["--framework", "pgd-at", "--he" if he else "--no-he", "--dataset", "digits",
            "--epochs", str(args.epochs), "--seed", str(args.seed), "--device", args.device,
            "--eval-examples", str(args.n_examples), "--out", str(Path(args.out) / name)]
    if args.steps_per_epoch:
        argv += ["--max-steps-per-epoch", str(args.steps_per_epoch)]
    return argv + (["--overwrite"] if args.overwrite else []) + (
        ["--no-progress"] if args.no_progress else [])


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed usage and the error
        return int(exc.code or 0)
    out = Path(args.out)
    try:
        owner = claim(out, PROG)
    except OutputFolderError as exc:
        return error(PROG, exc)
    try:
        if any(p.name != LOCK_NAME for p in out.iterdir()) and not args.overwrite:
            return error(PROG, f"{out} already holds files: pass --overwrite to replace them, "
                               "or another --out")
        for note in (owner.note, owner.remove_stale_temp_files()):
            if note:
                say(sys.stderr, note)
        return _quickstart(args, out)
    finally:
        owner.release()


def _quickstart(args: argparse.Namespace, out: Path) -> int:
    """Train both runs, evaluate them and write the outputs into ``out`` (locked)."""
    began, human, runs = time.perf_counter(), human_stream(args.json), []
    try:
        for name, he in RUNS:
            runs.append(train_cli.open_run(train_cli.parse(train_argv(args, name, he))))
            for note in runs[-1].notes:
                say(sys.stderr, note)
        return _train_and_evaluate(args, out, runs, began, human)
    except train_cli.USER_ERRORS as exc:
        return error(PROG, exc)
    finally:
        for run in runs:
            run.close()


def _train_and_evaluate(args: argparse.Namespace, out: Path, runs: Sequence, began: float,
                        human) -> int:
    from heat_fast.training.run import RunWriteError

    settings = Settings(attacks=DEFAULT_ATTACKS, n_examples=args.n_examples, seed=args.seed,
                        device=args.device, eps_sweep=SWEEP_EPS, sweep_attacks=SWEEP_ATTACKS,
                        progress=not args.no_progress)
    n_eval = min(args.n_examples, load_dataset("digits").test_size)
    total = sum(r.planned_units() for r in runs) + len(runs) * n_eval * units_per_example(settings)
    summaries = []
    with threads_for(args.threads, human) as count, \
            progress.Tracker(total, mode="off" if args.no_progress else "auto"):
        settings.threads = count
        try:
            for (name, _), run in zip(RUNS, runs):
                run.config.threads = count
                say(human, f"== training {name} on digits ({args.epochs} epochs)")
                say(human, run.plan())
                summaries.append(run.run(log=lambda line: say(human, line)))
        except KeyboardInterrupt:
            say(human, "\ninterrupted; rerun with --overwrite to start over")
            return 130
        except RunWriteError as exc:
            return error(PROG, exc)
        say(human, f"== evaluating on {n_eval} test images")
        try:
            reports = evaluate_checkpoints([out / name for name, _ in RUNS], settings)
        except CheckpointError as exc:
            return error(PROG, exc)
    say(human, table(reports))
    try:
        written = write_outputs(reports, settings, out)
    except OSError as exc:
        return error(PROG, f"cannot write in {out} ({exc.strerror or exc}): free some space and "
                           "rerun with --overwrite")
    for path in written:
        say(human, f"wrote {path}")
    seconds = time.perf_counter() - began
    say(human, f"quickstart finished in {seconds:.0f} s with {count} thread{'s' if count != 1 else ''}")
    if args.json:
        print_json({"seconds": round(seconds, 3), "threads": count, "trainings": summaries,
                    "evaluation": eval_payload(reports, settings)})
    return 0
