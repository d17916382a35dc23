"""``heat-fast train``: adversarial training (PGD-AT, ALP, TRADES, FreeAT, FastAT), HE on or off.

Settings come from, lowest first: the defaults, ``--preset``, ``--config FILE`` (TOML or
YAML, the same names as the flags), then the flags given on the command line. A resumed run
(``--resume``) continues with its saved configuration. ``--print-config`` prints the
resolved settings as TOML (a valid ``--config`` file) and ``--dry-run`` does every check and
read of a real run, prints its plan and writes nothing. Under ``torchrun`` the same command
trains data-parallel (DDP); only rank 0 prints and writes.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Dict, List, Optional, TextIO, Tuple

from heat_fast._output_folder import OutputFolderError
from heat_fast.budget import NORMS, format_eps
from heat_fast.cli.common import (add_common_arguments, budget, error, human_stream, print_json,
                                  say, seed, threads_for)
from heat_fast.data import DATASET_NAMES
from heat_fast.data.base import DatasetError
from heat_fast.models import MODEL_NAMES
from heat_fast.ops import BackendUnavailableError
from heat_fast.training import precision
from heat_fast.training.checkpoint import CheckpointError
from heat_fast.training.config import OPTIMIZERS, ConfigError, read_config_file, to_toml
from heat_fast.training.crafting import STARTS
from heat_fast.training.distributed import DistributedError
from heat_fast.training.frameworks import FRAMEWORKS
from heat_fast.training.objective import WEIGHT_NORM_MODES
from heat_fast.training.presets import PRESET_NAMES
from heat_fast.training.schedules import SCHEDULES

if TYPE_CHECKING:
    from heat_fast.training.run import TrainingRun

PROG = "heat-fast train"
EXAMPLE = ("example (under a minute on a 2-core CPU):\n"
           "  heat-fast train --framework pgd-at --he --dataset digits --epochs 5 --out runs/x\n"
           "data-parallel on 4 GPUs (--batch-size is the global batch, split over the processes):\n"
           "  torchrun --nproc_per_node=4 -m heat_fast train --preset pgd-at-he --data-dir DIR")
USER_ERRORS = (ConfigError, DatasetError, CheckpointError, BackendUnavailableError,
               DistributedError, FileNotFoundError, OutputFolderError)
# flags that steer the command rather than set a config value
CONTROL_FLAGS = ("preset", "resume", "overwrite", "no_progress", "json", "dist_backend",
                 "config", "print_config", "dry_run")


def _int_list(text: str) -> List[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epoch indices, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, argument_default=argparse.SUPPRESS, epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Adversarially train a model; writes DIR/metrics.jsonl (one line per epoch), "
                    "DIR/last.pt every epoch, DIR/best.pt (best PGD accuracy on the validation "
                    "split, or on the test subset without one) and DIR/training_curves.png.")
    on_off = argparse.BooleanOptionalAction
    run = p.add_argument_group("run")
    run.add_argument("--preset", choices=PRESET_NAMES,
                     help="published recipe setting the defaults (heat-fast presets lists them)")
    run.add_argument("--config", metavar="FILE",
                     help="TOML or YAML file of settings (the flag names; flags given here win)")
    run.add_argument("--print-config", action="store_true", default=False,
                     help="print the resolved settings as TOML (usable as --config) and exit")
    run.add_argument("--dry-run", action="store_true", default=False,
                     help="check everything and load the data, print the plan, train and write nothing")
    run.add_argument("--framework", choices=FRAMEWORKS, help="training framework (default pgd-at)")
    run.add_argument("--he", action=on_off, help="hypersphere-embedding head and losses (default off)")
    run.add_argument("--dataset", choices=DATASET_NAMES, help="default digits")
    run.add_argument("--data-dir", help="folder holding cifar-10-batches-py/, cifar-100-python/ or train/ + val/")
    run.add_argument("--model", choices=MODEL_NAMES,
                     help="default per dataset: small-cnn (digits), preact-resnet18 (cifar), resnet50 (imagenet)")
    run.add_argument("--image-size", type=int, help="imagenet crop size (default 224)")
    run.add_argument("--workers", type=int,
                     help="imagenet decoding processes (default: the usable CPUs, at most 8)")
    run.add_argument("--out", help="output folder (default runs/FRAMEWORK[-he]-DATASET)")
    run.add_argument("--resume", action="store_true", default=False,
                     help="continue the run in --out from last.pt (bit-exact on CPU with the same --threads)")
    run.add_argument("--overwrite", action="store_true", default=False,
                     help="start over even if --out already holds a checkpoint")
    run.add_argument("--seed", type=seed, help="default 0")
    run.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    opt = p.add_argument_group("optimization")
    opt.add_argument("--epochs", type=int, help="default 10")
    opt.add_argument("--batch-size", type=int, help="default 128 (64 on digits)")
    opt.add_argument("--optimizer", choices=tuple(OPTIMIZERS),
                     help="sgd (default), nesterov (SGD with Nesterov momentum) or adamw")
    opt.add_argument("--lr", type=float, help="base / peak learning rate (default 0.1; adamw 1e-3)")
    opt.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    opt.add_argument("--weight-decay", type=float, help="default 5e-4 (decoupled for adamw)")
    opt.add_argument("--schedule", choices=SCHEDULES,
                     help="default multistep (cyclic for fast-at: 0 → lr → 0; cosine: lr → 0)")
    opt.add_argument("--warmup-epochs", type=float,
                     help="linear lr warmup over this many epochs, any schedule (default 0)")
    opt.add_argument("--milestones", type=_int_list,
                     help="0-based epochs from which lr ×gamma, e.g. 74 or 100,105 (default 50%%,75%% of the epochs)")
    opt.add_argument("--gamma", type=float, help="multistep decay (default 0.1)")
    opt.add_argument("--label-smoothing", type=float, help="of the training loss (default 0)")
    opt.add_argument("--ema", type=float, metavar="DECAY",
                     help="keep an EMA of the weights with this decay, e.g. 0.999; it is what the "
                          "per-epoch evaluation, best.pt and heat-fast eval use (default 0: off)")
    opt.add_argument("--max-steps-per-epoch", type=int, help="cap the batches per epoch (quick runs)")
    atk = p.add_argument_group("attack and loss (budgets in [0, 1] pixel units: 8/255 or 0.031)")
    atk.add_argument("--norm", choices=NORMS, help="threat model (default linf)")
    atk.add_argument("--eps", type=budget, help="budget (default 8/255; 0.1 on digits; 4/255 on imagenet)")
    atk.add_argument("--alpha", type=budget,
                     help="step size (default eps/4; FastAT 1.25·eps; FreeAT eps)")
    atk.add_argument("--steps", type=int, help="attack steps (default 10; FastAT 1; FreeAT: replays m, default 4)")
    atk.add_argument("--start", choices=STARTS, help="random start (default uniform; TRADES normal)")
    atk.add_argument("--scale", type=float, help="HE scale s (default 15; ALP 20; FreeAT 10)")
    atk.add_argument("--margin", type=float, help="HE angular margin m (default 0.2; ALP 0.3)")
    atk.add_argument("--weight-norm", choices=tuple(WEIGHT_NORM_MODES),
                     help="HE head weight normalization: differentiable (default: gradients "
                          "through the normalization) or project (AT_HE: the stored weight "
                          "renormalized in place every forward, no gradient through it)")
    atk.add_argument("--beta", type=float, help="TRADES β (default 6)")
    atk.add_argument("--alp-weight", type=float, help="ALP λ (default 0.5)")
    atk.add_argument("--bn-eval", action=on_off, help="BN in eval mode while crafting (default on)")
    atk.add_argument("--crop-padding", type=int, help="random-crop padding (default 4; 1 on digits; 0 = off)")
    atk.add_argument("--flip", action=on_off, help="random horizontal flip (default on for CIFAR/ImageNet)")
    speed = p.add_argument_group("speed")
    speed.add_argument("--backend", choices=("auto", "reference", "triton", "native"),
                       help="op backend (default auto: the fused kernels where available)")
    speed.add_argument("--reference", action="store_const", const="reference", dest="backend",
                       help="plain-torch reference ops (same as --backend reference)")
    speed.add_argument("--bf16", action=on_off,
                       help="bfloat16 autocast (default: on where the device computes bf16 natively: "
                            "CUDA GPUs with bf16, CPUs with avx512_bf16 or AMX; off elsewhere)")
    speed.add_argument("--fp32", action="store_const", const=False, dest="bf16",
                       help="float32 throughout (same as --no-bf16)")
    speed.add_argument("--channels-last", action=on_off,
                       help="channels_last memory format (default: on where bf16 is)")
    speed.add_argument("--compile", action=on_off,
                       help="torch.compile the model and the attack step (on CUDA the K-step "
                            "attack is replayed from a CUDA graph); compiling takes a while "
                            "at the start (default off)")
    dist = p.add_argument_group("distributed (under torchrun; --batch-size is the global batch)")
    dist.add_argument("--dist-backend", choices=("nccl", "gloo"), default=None,
                      help="process-group backend (default nccl on CUDA, gloo on CPU)")
    dist.add_argument("--sync-bn", action=on_off,
                      help="SyncBatchNorm across processes (CUDA only; default off)")
    ev = p.add_argument_group("per-epoch evaluation (a monitor; use heat-fast eval for robustness)")
    ev.add_argument("--eval-examples", type=int, help="fixed test subset size (default 500)")
    ev.add_argument("--eval-steps", type=int, help="PGD steps on it (default 10)")
    ev.add_argument("--eval-batch-size", type=int, help="default 256")
    ev.add_argument("--val-split", type=float, metavar="FRACTION",
                    help="hold out this fraction of the training set (seeded) and choose best.pt "
                         "on it instead of on the test subset (default 0: off)")
    out = p.add_argument_group("logging")
    out.add_argument("--tensorboard", action=on_off,
                     help="also log every metric to DIR/tensorboard (pip install 'heat_fast[tensorboard]')")
    add_common_arguments(p)
    return p


def _values(args: argparse.Namespace) -> Dict[str, object]:
    return {k: v for k, v in vars(args).items() if k not in CONTROL_FLAGS}


def _default_out(values: Dict[str, object], preset_name: Optional[str]) -> str:
    from heat_fast.training.presets import preset
    merged = dict(preset(preset_name) if preset_name else {}, **values)
    name = merged.get("framework", "pgd-at") + ("-he" if merged.get("he") else "")
    return f"runs/{name}-{merged.get('dataset', 'digits')}"


def settings(args: argparse.Namespace) -> Tuple[Dict[str, object], Optional[str]]:
    """(config values, preset name): the --config file's, overridden by the flags given."""
    from_file = read_config_file(args.config) if getattr(args, "config", None) else {}
    preset_name = getattr(args, "preset", None) or from_file.pop("preset", None)
    values = dict(from_file, **_values(args))
    values.setdefault("out", _default_out(values, preset_name))
    return values, preset_name


def parse(argv: List[str]) -> argparse.Namespace:
    """Parse ``argv``; SystemExit (status 2, message printed) on bad flags."""
    return build_parser().parse_args(argv)


def open_run(args: argparse.Namespace) -> "TrainingRun":
    """Every check and read of the run ``args`` asks for (see
    :func:`heat_fast.training.run.prepare`); raises one of :data:`USER_ERRORS`."""
    from heat_fast.training.run import build_config, prepare

    values, preset_name = settings(args)
    given = dict(values, preset=preset_name) if preset_name else values  # a resume compares it
    return prepare(build_config(values, preset_name), resume_values=given, resume=args.resume,
                   overwrite=args.overwrite, progress=not args.no_progress,
                   dist_backend=args.dist_backend, dry_run=args.dry_run)


def header(run: "TrainingRun") -> str:
    cfg, ctx = run.config, run.distributed
    where = f"device {cfg.device}" if ctx is None else f"{ctx.world_size} processes on {ctx.device.type}"
    he = f" + HE (weight norm {cfg.weight_norm})" if cfg.he else ""
    return (f"{PROG}: {cfg.framework}{he} on {cfg.dataset} ({cfg.model}), "
            f"{cfg.norm} eps {format_eps(cfg.eps)}, alpha {format_eps(cfg.alpha)}, steps {cfg.steps}, "
            f"epochs {run.start_epoch + 1}..{cfg.epochs}, {where}, backend {cfg.backend}"
            f" -> {run.out}\n"
            f"  speed: {precision.describe(cfg.device, cfg.bf16, cfg.channels_last)}, "
            f"compile {'on' if cfg.compile else 'off'}")


def _number(value: Optional[float]) -> str:
    """A metric as printed: 4 decimals, or "-" where it was not measured (null)."""
    return "-" if value is None else f"{value:.4f}"


def summary_lines(summary: dict) -> List[str]:
    final, best, epochs = summary["final"], summary["best"], summary["epochs"]
    lines = [f"done: {epochs} epoch{'s' if epochs != 1 else ''} in {summary['out']} "
             f"({summary['seconds_this_session']:.1f} s this session, {summary['threads']} "
             f"thread{'s' if summary['threads'] != 1 else ''})"]
    if final:
        lines.append(f"  final epoch {final['epoch']}: test clean "
                     f"{_number(final['test_clean_acc'])}, test PGD-{final['eval_pgd_steps']} {_number(final['test_pgd_acc'])}, "
                     f"train loss {_number(final['loss'])}")
    if best:
        lines.append(f"  best {best['on']} PGD accuracy {_number(best['pgd_acc'])} at epoch "
                     f"{best['epoch']} (best.pt)")
    if summary.get("curves"):
        lines.append(f"  curves {summary['curves']}")
    lines.append(f"  checkpoint {summary['checkpoint']}; evaluate with: heat-fast eval {summary['checkpoint']}")
    return lines


def _print_config(values: Dict[str, object], preset_name: Optional[str], as_json: bool) -> None:
    from heat_fast.training.run import build_config

    config = build_config(values, preset_name)
    resolved = dict(config.resolved().to_dict(), device=config.device)
    if as_json:
        print_json(resolved)
    else:
        sys.stdout.write(to_toml(resolved))


def main(argv: List[str]) -> int:
    """Run ``heat-fast train`` with ``argv``; returns the exit status (2 for bad input)."""
    try:
        args = parse(argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return int(exc.code or 0)
    human = human_stream(args.json)
    try:
        if args.print_config:
            _print_config(*settings(args), args.json)
            return 0
        run = open_run(args)
    except USER_ERRORS as exc:
        return error(PROG, exc)
    try:
        return execute(run, args, human)
    finally:
        run.close()


def execute(run: "TrainingRun", args: argparse.Namespace, human: TextIO) -> int:
    """Choose the threads, print the header and plan, train (or stop after them with
    ``--dry-run``), print the summary; 130 when interrupted, 2 when a file cannot be written."""
    from heat_fast.training.run import RunWriteError

    show = run.is_main
    stream = human if show else open_null()
    for note in run.notes if show else ():
        say(sys.stderr, note)
    if run.finished:
        say(stream, f"nothing to train: the run in {run.out} has finished all its "
                    f"{run.start_epoch} epochs (to train it longer, pass --resume --epochs N "
                    f"with N > {run.start_epoch})")
        if args.json:
            print_json({"out": str(run.out), "epochs": run.start_epoch, "nothing_to_train": True})
        return 0
    saved = run.resumed_threads
    requested = getattr(args, "threads", None)
    with threads_for(requested, stream, fixed=saved, fixed_source="the resumed run's") as count:
        if saved is not None and count != saved:
            say(sys.stderr, f"warning: the run used {saved} threads until now; with {count} it "
                            "continues correctly but not bit-identically to an uninterrupted run")
        run.config.threads = count
        if show:
            say(stream, header(run))
            if run.data_source:
                say(stream, run.data_source)
            say(stream, run.plan())
        if args.dry_run:
            if show:
                say(stream, "dry run: every check passed and the data loaded; nothing was trained or written")
                if args.json:
                    print_json({"dry_run": True, "plan": run.plan(), "config": run.config.to_dict()})
            return 0
        try:
            summary = run.run(log=lambda line: say(stream, line))
        except KeyboardInterrupt:
            print(f"\n{interrupted(run)}", file=sys.stderr)
            return 130
        except RunWriteError as exc:
            return error(PROG, exc)
    if show:
        for line in summary_lines(summary):
            say(stream, line)
        if args.json:
            print_json(summary)
    return 0


def interrupted(run: "TrainingRun") -> str:
    """What an interrupted run left, and how to go on from there."""
    from heat_fast.training.run import LAST

    if (run.out / LAST).exists():
        return (f"interrupted; {run.out / LAST} holds the last finished epoch; continue with "
                f"--resume --out {run.out}")
    return ("interrupted before the first epoch finished, so nothing was saved: run the same "
            "command again to start")


def open_null() -> TextIO:
    """A stream that discards what is written (non-main ranks print nothing)."""
    import io
    return io.StringIO()
