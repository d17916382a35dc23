"""``heat-fast eval CKPT [CKPT ...]``: robust accuracy of checkpoints side by side.

Each checkpoint (a ``heat-fast train`` run directory or its ``last.pt``; with
``--model-factory module:function``, a plain state dict of the model that function builds)
is evaluated on the first ``--n-examples`` test images of its dataset under every attack in
``--attacks``, each on the examples still robust after the attacks before it, plus the
per-example worst case over all of them. The default attacks are heat_fast's equivalent of
AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square) after a PGD-20 first pass;
``--quick`` is a cheap set for monitoring training. Prints the plan (with the folder each
test set is read from), then one table; with ``--out`` (locked for the evaluation, like a
training run's folder) writes ``eval.json`` and, with ``--eps-sweep``, ``eps_sweep.png``.
Exit status 2 for bad arguments, a device or backend this machine lacks, or a missing,
corrupt or mismatched checkpoint, with a one-line message.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

import torch

from heat_fast import progress
from heat_fast._output_folder import Claim, OutputFolderError, claim
from heat_fast.attacks import AutoAttackUnavailableError
from heat_fast.budget import NORMS, BudgetError, check_budget, format_eps
from heat_fast.cli.common import (add_common_arguments, budget, error, human_stream,
                                  positive_int, print_json, say, seed, threads_for)
from heat_fast.data import DATASET_NAMES, DatasetError, load_dataset_for
from heat_fast.evaluation import (CLEAN, DEFAULT_ATTACKS, QUICK_ATTACKS, WORST, CheckpointError,
                                  Settings, evaluate_checkpoints, parse_attack_list, table,
                                  write_outputs)
from heat_fast.evaluation.checkpoints import Checkpoint, load
from heat_fast.evaluation.session import eval_payload
from heat_fast.ops import BackendUnavailableError, resolve_backend
from heat_fast.training.config import ConfigError, check_device

PROG = "heat-fast eval"


def parse_eps_list(text: str) -> List[float]:
    return [budget(part) for part in text.split(",") if part.strip()]


def parse_attacks(text: str) -> List[str]:
    """The attack list, with clean first and the worst case always last."""
    try:
        return parse_attack_list(text.split(",") + [WORST])
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def with_norm(names: Sequence[str], norm: str) -> List[str]:
    """``names`` with ``-l2`` appended to each attack that names no norm, for ``norm`` l2."""
    if norm == "linf":
        return list(names)
    named = [n if n in (CLEAN, WORST) or {"linf", "l2"} & set(n.split("-")) else f"{n}-{norm}"
             for n in names]
    try:
        return parse_attack_list(named)
    except ValueError as err:
        raise CheckpointError(f"--norm {norm}: {err}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+",
                        help="run directories or .pt checkpoint files (state dicts with --model-factory)")
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
    parser.add_argument("--eps", type=budget, default=None,
                        help="radius in [0, 1] pixel units, e.g. 8/255 or 0.031 "
                             "(default: each checkpoint's training eps)")
    parser.add_argument("--norm", choices=NORMS, default=None,
                        help="threat model; l2 runs each attack's L2 form "
                             "(default: the checkpoints' training norm, else linf)")
    parser.add_argument("--n-examples", type=positive_int, default=1000,
                        help="first N test images (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--seed", type=seed, default=0, help="attack random starts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", choices=("auto", "reference", "triton", "native"),
                        help="backend of the pgd_step/random_init ops")
    parser.add_argument("--data-dir", default=None, help="dataset directory (cifar10/100, imagenet)")
    parser.add_argument("--out", default=None, help="directory for eval.json and eps_sweep.png")
    parser.add_argument("--eps-sweep", type=parse_eps_list, default=[],
                        help="comma list of radii, e.g. 0,2/255,4/255,8/255 (needs --out)")
    parser.add_argument("--sweep-attacks", type=parse_attacks, default=None,
                        help="attacks whose worst case the sweep plots (default: --attacks)")
    factory = parser.add_argument_group("any model (instead of heat-fast train checkpoints)")
    factory.add_argument("--model-factory", metavar="MODULE:FUNCTION", default=None,
                         help="function (in an importable module or a .py file) that takes no "
                              "arguments and returns the nn.Module; inputs in [0, 1]; each "
                              "CKPT is then a state dict; needs --dataset and --eps")
    factory.add_argument("--dataset", choices=DATASET_NAMES, default=None,
                         help="the test set for --model-factory models")
    add_common_arguments(parser, default_suppressed=True)
    return parser


def _load(args: argparse.Namespace) -> List[Checkpoint]:
    if args.model_factory is None:
        return [load(p, args.device) for p in args.checkpoints]
    from heat_fast.cli.model_factory import load_with_factory

    if args.dataset is None or args.eps is None:
        raise CheckpointError("--model-factory needs --dataset (its test set) and --eps "
                              "(a state dict records neither)")
    config = {"dataset": args.dataset, "data_dir": args.data_dir, "eps": args.eps,
              "norm": args.norm or "linf"}
    return [load_with_factory(p, args.model_factory, config, args.device) for p in args.checkpoints]


def _norm(args: argparse.Namespace, loaded: Sequence[Checkpoint]) -> str:
    if args.norm is not None:
        return args.norm
    norms = sorted({str(c.config.get("norm", "linf")) for c in loaded})
    if len(norms) > 1:
        raise CheckpointError(f"the checkpoints were trained under different norms ({', '.join(norms)}); "
                              "pass --norm")
    return norms[0]


def _settings(args: argparse.Namespace, norm: str) -> Settings:
    if args.eps is not None:
        check_budget(args.eps, "--eps", norm)
    for value in args.eps_sweep:
        check_budget(value, "--eps-sweep", norm)
    return Settings(attacks=with_norm(args.attacks, norm), eps=args.eps, n_examples=args.n_examples,
                    batch_size=args.batch_size, seed=args.seed, device=args.device,
                    backend=args.backend, data_dir=args.data_dir, eps_sweep=args.eps_sweep,
                    sweep_attacks=(with_norm(args.sweep_attacks, norm)
                                   if args.sweep_attacks else None),
                    independent=args.independent,
                    progress=not args.no_progress)


def units_per_example(settings: Settings) -> float:
    """The cost of one test image under ``settings`` (attacks and sweep), in
    :mod:`heat_fast.progress` units."""
    sweep = [n for n in (settings.sweep_attacks or settings.attacks) if n not in (CLEAN, WORST)]
    sweep_cost = sum(1 + (sum(map(progress.attack_passes, sweep)) if eps else 0)
                     for eps in settings.eps_sweep)
    return sum(map(progress.attack_passes, settings.attacks)) + sweep_cost


def plan(loaded: Sequence[Checkpoint], settings: Settings) -> tuple:
    """(the plan's lines, its cost in :mod:`heat_fast.progress` units)."""
    lines, units = [f"eval plan: {len(loaded)} checkpoint{'s' if len(loaded) != 1 else ''}"], 0.0
    for ckpt in loaded:
        data = load_dataset_for(ckpt.config, settings.data_dir)
        n = min(settings.n_examples or 0, data.test_size)
        eps = settings.eps if settings.eps is not None else ckpt.config.get("eps")
        units += n * units_per_example(settings)
        folder = data.extra.get("path")
        origin = "--data-dir" if settings.data_dir else "the checkpoint's data_dir"
        source = f" from {folder} ({origin})" if folder else ""
        lines.append(f"  {ckpt.path}: {n} {ckpt.config.get('dataset')} test images{source}, "
                     f"eps {format_eps(eps) if eps is not None else '?'}")
    lines.append("  attacks: " + ", ".join(
        f"{n} ({progress.attack_passes(n)} passes)" if progress.attack_passes(n) > 1 else n
        for n in settings.attacks))
    if settings.eps_sweep:
        sweep = [n for n in (settings.sweep_attacks or settings.attacks) if n not in (CLEAN, WORST)]
        lines.append(f"  eps sweep: {', '.join(format_eps(e) for e in settings.eps_sweep)} "
                     f"with {', '.join(sweep)}")
    return lines, units


def check_machine(device: str, backend: str) -> None:
    """ConfigError unless this machine has ``device`` and ``backend`` runs on it."""
    torch_device = check_device(device)
    try:
        resolve_backend(backend, torch_device, torch.float32)
    except (BackendUnavailableError, ValueError) as err:
        raise ConfigError(f"--backend {backend}: {err} (--backend auto picks one that runs "
                          "here)") from None


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.eps_sweep and not args.out:
            parser.error("--eps-sweep writes a plot: give --out DIR")
    except SystemExit as exc:  # argparse printed usage and the error
        return int(exc.code or 0)
    human = human_stream(args.json)
    try:
        check_machine(args.device, args.backend)
        loaded = _load(args)
        settings = _settings(args, _norm(args, loaded))
        lines, units = plan(loaded, settings)
        owner = claim(args.out, "heat-fast eval") if args.out else None
    except (CheckpointError, DatasetError, BudgetError, ConfigError, OutputFolderError) as err:
        return error(PROG, err)
    try:
        return _run(args, loaded, settings, lines, units, human, owner)
    finally:
        if owner is not None:
            owner.release()


def _run(args: argparse.Namespace, loaded: Sequence[Checkpoint], settings: Settings,
         lines: List[str], units: float, human, owner: Optional[Claim]) -> int:
    """Evaluate as planned, print the table, write --out; the exit status."""
    for note in (owner.note, owner.remove_stale_temp_files()) if owner is not None else ():
        if note:
            say(sys.stderr, note)
    with threads_for(args.threads, human) as count:
        settings.threads = count
        for line in lines:
            say(human, line)
        try:
            with progress.Tracker(units, mode="off" if args.no_progress else "auto"):
                reports = evaluate_checkpoints(loaded, settings)
        except (CheckpointError, DatasetError, AutoAttackUnavailableError) as err:
            return error(PROG, err)
    say(human, table(reports))
    if args.out:
        try:
            written = write_outputs(reports, settings, args.out)
        except OSError as err:
            return error(PROG, f"cannot write in --out {args.out} ({err.strerror or err}): free "
                               "some space or choose another --out")
        for path in written:
            say(human, f"wrote {path}")
    if args.json:
        print_json(eval_payload(reports, settings))
    return 0
