"""``heat-fast train``: adversarial training (PGD-AT, ALP, TRADES, FreeAT, FastAT), HE on or off.

Only the flags given on the command line override the preset (``--preset``) and the
defaults; a resumed run (``--resume``) continues with its saved configuration. Under
``torchrun`` the same command trains data-parallel (DDP); only rank 0 prints and writes.
"""
from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from typing import TYPE_CHECKING, Dict, List, Optional

from heat_fast.data import DATASET_NAMES
from heat_fast.data.base import DatasetError
from heat_fast.models import MODEL_NAMES
from heat_fast.ops import BackendUnavailableError
from heat_fast.training import precision
from heat_fast.training.checkpoint import CheckpointError
from heat_fast.training.config import ConfigError
from heat_fast.training.distributed import DistributedError
from heat_fast.training.crafting import STARTS
from heat_fast.training.frameworks import FRAMEWORKS
from heat_fast.training.presets import PRESET_NAMES
from heat_fast.training.schedules import SCHEDULES

if TYPE_CHECKING:
    from heat_fast.training.run import TrainingRun

EXAMPLE = ("example (a few minutes on a 2-core CPU):\n"
           "  heat-fast train --framework pgd-at --he --dataset digits --epochs 5 --out runs/x\n"
           "data-parallel on 4 GPUs (--batch-size is the global batch, split over the processes):\n"
           "  torchrun --nproc_per_node=4 -m heat_fast train --preset pgd-at-he --data-dir DIR")


def pixel_budget(text: str) -> float:
    """Parse a budget in [0, 1] pixel units: a fraction '8/255' or a float '0.031'."""
    try:
        value = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number like 8/255 or 0.031, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    if value > 1:
        raise argparse.ArgumentTypeError(f"is in [0, 1] pixel units, got {text} (did you mean {text}/255?)")
    return value


def _int_list(text: str) -> List[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epoch indices, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="heat-fast train", argument_default=argparse.SUPPRESS, epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Adversarially train a model; writes DIR/metrics.jsonl (one line per epoch), "
                    "DIR/last.pt every epoch and DIR/best.pt (best test PGD accuracy).")
    on_off = argparse.BooleanOptionalAction
    run = p.add_argument_group("run")
    run.add_argument("--preset", choices=PRESET_NAMES, help="published recipe setting the defaults")
    run.add_argument("--framework", choices=FRAMEWORKS, help="training framework (default pgd-at)")
    run.add_argument("--he", action=on_off, help="hypersphere-embedding head and losses (default off)")
    run.add_argument("--dataset", choices=DATASET_NAMES, help="default digits")
    run.add_argument("--data-dir", help="folder holding cifar-10-batches-py/, cifar-100-python/ or train/ + val/")
    run.add_argument("--model", choices=MODEL_NAMES,
                     help="default per dataset: small-cnn (digits), preact-resnet18 (cifar), resnet50 (imagenet)")
    run.add_argument("--image-size", type=int, help="imagenet resize/crop size (default 224)")
    run.add_argument("--out", help="output folder (default runs/FRAMEWORK[-he]-DATASET)")
    run.add_argument("--resume", action="store_true", default=False,
                     help="continue the run in --out from last.pt (bit-exact on CPU)")
    run.add_argument("--overwrite", action="store_true", default=False,
                     help="start over even if --out already holds a checkpoint")
    run.add_argument("--seed", type=int, help="default 0")
    run.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    opt = p.add_argument_group("optimization")
    opt.add_argument("--epochs", type=int, help="default 10")
    opt.add_argument("--batch-size", type=int, help="default 128 (64 on digits)")
    opt.add_argument("--lr", type=float, help="base / peak learning rate (default 0.1)")
    opt.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    opt.add_argument("--weight-decay", type=float, help="default 5e-4")
    opt.add_argument("--schedule", choices=SCHEDULES, help="default multistep (cyclic for fast-at: 0 → lr → 0)")
    opt.add_argument("--milestones", type=_int_list,
                     help="0-based epochs from which lr ×gamma, e.g. 74 or 100,105 (default 50%%,75%% of the epochs)")
    opt.add_argument("--gamma", type=float, help="multistep decay (default 0.1)")
    opt.add_argument("--max-steps-per-epoch", type=int, help="cap the batches per epoch (quick runs)")
    atk = p.add_argument_group("attack and loss (budgets in [0, 1] pixel units: 8/255 or 0.031)")
    atk.add_argument("--eps", type=pixel_budget, help="L∞ budget (default 8/255; 0.1 on digits)")
    atk.add_argument("--alpha", type=pixel_budget,
                     help="step size (default eps/4; FastAT 1.25·eps; FreeAT eps)")
    atk.add_argument("--steps", type=int, help="attack steps (default 10; FastAT 1; FreeAT: replays m, default 4)")
    atk.add_argument("--start", choices=STARTS, help="random start (default uniform; TRADES normal)")
    atk.add_argument("--scale", type=float, help="HE scale s (default 15; ALP 20; FreeAT 10)")
    atk.add_argument("--margin", type=float, help="HE angular margin m (default 0.2; ALP 0.3)")
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
    out = p.add_argument_group("output")
    out.add_argument("--no-progress", action="store_true", default=False, help="no progress bar")
    out.add_argument("--json", action="store_true", default=False, help="print the summary as JSON")
    return p


CONTROL_FLAGS = ("preset", "resume", "overwrite", "no_progress", "json", "dist_backend")


def _values(args: argparse.Namespace) -> Dict[str, object]:
    return {k: v for k, v in vars(args).items() if k not in CONTROL_FLAGS}


def _default_out(values: Dict[str, object], preset_name: Optional[str]) -> str:
    from heat_fast.training.presets import preset
    merged = dict(preset(preset_name) if preset_name else {}, **values)
    name = merged.get("framework", "pgd-at") + ("-he" if merged.get("he") else "")
    return f"runs/{name}-{merged.get('dataset', 'digits')}"


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    final, best = summary["final"], summary["best"]
    print(f"done: {summary['epochs']} epochs in {summary['out']} "
          f"({summary['seconds_this_session']:.1f}s this session)")
    if final:
        print(f"  final epoch {final['epoch']}: test clean {final['test_clean_acc']:.4f}, "
              f"test PGD-{final['eval_pgd_steps']} {final['test_pgd_acc']:.4f}, "
              f"train loss {final['loss']:.4f}")
    if best:
        print(f"  best test PGD accuracy {best['test_pgd_acc']:.4f} at epoch {best['epoch']} (best.pt)")
    print(f"  checkpoint {summary['checkpoint']}; evaluate with: heat-fast eval {summary['checkpoint']}")


def main(argv: List[str]) -> int:
    """Run ``heat-fast train`` with ``argv``; returns the exit status (2 for bad input)."""
    from heat_fast.training.run import build_config, prepare

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return int(exc.code or 0)
    values = _values(args)
    preset_name = getattr(args, "preset", None)
    values.setdefault("out", _default_out(values, preset_name))
    try:
        config = build_config(values, preset_name)
        run = prepare(config, resume_values=values, resume=args.resume,
                      overwrite=args.overwrite, progress=not args.no_progress,
                      dist_backend=args.dist_backend)
    except (ConfigError, DatasetError, CheckpointError, BackendUnavailableError,
            DistributedError, FileNotFoundError) as exc:
        print(f"heat-fast train: error: {exc}", file=sys.stderr)
        return 2
    try:
        return _train(run, args.json)
    finally:
        run.close()


def _train(run: "TrainingRun", as_json: bool) -> int:
    cfg, ctx = run.config, run.distributed
    where = f"device {cfg.device}" if ctx is None else f"{ctx.world_size} processes on {ctx.device.type}"
    if run.is_main:
        print(f"heat-fast train: {cfg.framework}{' + HE' if cfg.he else ''} on {cfg.dataset} "
              f"({cfg.model}), eps {cfg.eps:.4g}, alpha {cfg.alpha:.4g}, steps {cfg.steps}, "
              f"epochs {run.start_epoch + 1}..{cfg.epochs}, {where}, backend {cfg.backend}"
              f" -> {run.out}")
        print(f"  speed: {precision.describe(cfg.device, cfg.bf16, cfg.channels_last)}, "
              f"compile {'on' if cfg.compile else 'off'}")
    try:
        summary = run.run()
    except KeyboardInterrupt:
        print(f"\ninterrupted; {run.out}/last.pt holds the last finished epoch; "
              f"continue with --resume --out {run.out}", file=sys.stderr)
        return 130
    if run.is_main:
        _print_summary(summary, as_json)
    return 0
