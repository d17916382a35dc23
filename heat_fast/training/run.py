"""A ``heat-fast train`` run: configuration → data, model, optimizer, trainer → epochs with
metrics, atomic checkpoints, a best checkpoint, a bit-exact resume and training curves.

:func:`prepare` locks the output folder for the life of the run (one run per folder; see
:mod:`heat_fast._output_folder`) and does every check and every read before anything is
written (bad input never touches an existing checkpoint); :meth:`TrainingRun.run` trains;
:meth:`TrainingRun.close` unlocks.

Each epoch appends one line to ``metrics.jsonl``: lr, loss, the running train accuracies
(defined precisely in the README's "What a run writes"), clean and PGD accuracy on a fixed test subset and, with
``val_split``, on the held-out validation examples, which then choose ``best.pt`` (else the
test subset does, as the Bag-of-Tricks recipe did), the seconds and the torch thread count.
Lines are standard JSON (null for a value that is not a finite number) and fsynced; a resume
drops a torn last line (a write cut short) with a warning. A file that cannot be written
(a full disk) raises :class:`RunWriteError`; ``last.pt`` then still holds the last epoch.

Under ``torchrun`` every process runs the same code: each trains on its shard of every
global batch (``batch_size`` is the global batch), rank 0 alone evaluates, writes metrics and
checkpoints (the plain model's weights, so they load anywhere) and logs; a checkpoint also
holds every rank's own trainer and RNG state under ``ranks`` for a resume with the same
number of processes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from heat_fast import progress
from heat_fast._files import (append_line, atomic_write_text, finite_or_none, read_json_lines,
                              strict_json)
from heat_fast._output_folder import Claim, claim
from heat_fast.budget import format_eps
from heat_fast.data import Augment, Dataset, ImageFolder, load_dataset_for
from heat_fast.models import build_model
from heat_fast.ops import resolve_backend
from heat_fast.threads import usable_cpus
from heat_fast.training.checkpoint import (CheckpointError, capture_rng, load_checkpoint,
                                           restore_rng, save_checkpoint)
from heat_fast.training.config import RESUMABLE_OVERRIDES, ConfigError, TrainConfig
from heat_fast.training.distributed import Distributed, launched_by_torchrun, rank_seed, setup
from heat_fast.training.ema import WeightEMA
from heat_fast.training.evaluate import evaluate_pgd
from heat_fast.training.objective import weight_norm_mode
from heat_fast.training.presets import preset
from heat_fast.training.schedules import build_scheduler
from heat_fast.training.trainer import Trainer

LAST, BEST, METRICS, CURVES, TENSORBOARD = ("last.pt", "best.pt", "metrics.jsonl",
                                           "training_curves.png", "tensorboard")
EVAL_SEED_OFFSET = 1_000_003
VAL_SEED_OFFSET = 7
MAX_DEFAULT_WORKERS = 8
COMMAND = "heat-fast train"


class RunWriteError(RuntimeError):
    """A file of the run could not be written (a full disk, a folder removed meanwhile)."""


def build_config(values: Dict[str, object], preset_name: Optional[str] = None) -> TrainConfig:
    """Defaults ← preset ``preset_name`` ← ``values`` (the explicitly given settings)."""
    merged = preset(preset_name) if preset_name else {}
    merged.update(values)
    return TrainConfig.from_dict(merged)


def resume_config(saved: dict, values: Dict[str, object]) -> TrainConfig:
    """The checkpoint's config with the explicitly given ``values`` that a resume may change
    (:data:`RESUMABLE_OVERRIDES`); any other differing value is an error."""
    config = TrainConfig.from_dict(saved)
    for key, value in values.items():
        if key in RESUMABLE_OVERRIDES:
            setattr(config, key, value)
        elif getattr(config, key, None) != value:
            raise ConfigError(f"--resume continues the saved run, whose {key} is "
                              f"{getattr(config, key, None)!r}; got {value!r} (only "
                              f"{', '.join(RESUMABLE_OVERRIDES)} may change)")
    return config


def step_passes(framework: str, steps: int) -> int:
    """Forward/backward passes per training example in one step (a cost estimate): the
    attack's steps plus the training pass(es)."""
    return {"free-at": steps, "fast-at": 2, "trades": steps + 2, "alp": steps + 2}.get(
        framework, steps + 1)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.optimizer == "nesterov")


class TrainingRun:
    """Everything a run needs, built by :func:`prepare`. ``eval_sets`` maps "test" (and
    "val" with a validation split) to fixed (images, labels) for the per-epoch evaluation."""

    def __init__(self, config: TrainConfig, trainer: Trainer,
                 eval_sets: Dict[str, Tuple[Tensor, Tensor]], out: Path, start_epoch: int = 0,
                 best: Optional[dict] = None, ema: Optional[WeightEMA] = None,
                 show_progress: bool = True, steps_per_epoch: int = 0):
        self.config, self.trainer, self.out, self.eval_sets = config, trainer, out, eval_sets
        self.steps_per_epoch = steps_per_epoch
        self.start_epoch, self.best, self.ema = start_epoch, best or {}, ema
        self.show_progress = show_progress
        self.resumed_threads: Optional[int] = None  # the thread count of the run resumed
        self.notes: List[str] = []  # lines for the user: a lock taken over, files cleaned up
        self.data_source: Optional[str] = None  # "data: NAME from FOLDER (WHERE FROM)"
        self.output_claim: Optional[Claim] = None  # the lock on ``out`` (rank 0, not dry runs)

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.model

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights evaluated and chosen for best.pt: the EMA when kept, else the model."""
        return self.model if self.ema is None else self.ema.model

    @property
    def distributed(self) -> Optional[Distributed]:
        return self.trainer.distributed

    @property
    def is_main(self) -> bool:
        """True on the process that evaluates, writes and logs (rank 0, or the only one)."""
        return self.distributed is None or self.distributed.is_main

    @property
    def selects_on(self) -> str:
        """The evaluation set that chooses best.pt: "val" with a validation split, else "test"."""
        return "val" if "val" in self.eval_sets else "test"

    @property
    def finished(self) -> bool:
        """True when a resumed run has no epoch left to train."""
        return self.start_epoch >= self.config.epochs

    def close(self) -> None:
        """Unlock the output folder; leave the process group, if any."""
        try:
            self.trainer.leave_process_group()
        finally:
            if self.output_claim is not None:
                self.output_claim.release()

    # --- the plan and its cost, for the progress display -------------------------------
    def unit_costs(self) -> Dict[str, float]:
        """Units (example forward/backward passes) per training step."""
        cfg = self.config
        return {"train": float(cfg.batch_size * step_passes(cfg.framework, cfg.steps))}

    def eval_units(self) -> float:
        return float(sum(x.shape[0] for x, _ in self.eval_sets.values()) * (self.config.eval_steps + 2))

    def planned_units(self) -> float:
        """The work left in this run, in :mod:`heat_fast.progress` units."""
        per_epoch = self.steps_per_epoch * self.unit_costs()["train"] + self.eval_units()
        return (self.config.epochs - self.start_epoch) * per_epoch

    def plan(self) -> str:
        """One line: epochs, steps, passes per step, model, batch, per-epoch evaluation."""
        cfg = self.config
        attack = {"free-at": f"FreeAT m={cfg.steps} replays", "fast-at": "FGSM"}.get(
            cfg.framework, f"PGD-{cfg.steps}")
        sets = ", ".join(f"{x.shape[0]} {name}" for name, (x, _) in self.eval_sets.items())
        millions = sum(p.numel() for p in self.model.parameters()) / 1e6
        epochs = cfg.epochs - self.start_epoch
        return (f"plan: epochs {self.start_epoch + 1}..{cfg.epochs} x {self.steps_per_epoch} "
                f"steps = {epochs * self.steps_per_epoch} steps ({attack}: "
                f"{step_passes(cfg.framework, cfg.steps)} passes of {cfg.model} ({millions:.2g}M "
                f"parameters) per example, batch {cfg.batch_size}, on {self.trainer.device.type}), "
                f"then PGD-{cfg.eval_steps} on {sets} examples each epoch; best.pt by "
                f"{self.selects_on} PGD accuracy")

    # --- checkpoints -----------------------------------------------------------------
    def _rank_states(self) -> Optional[List[dict]]:
        """Each rank's own trainer and RNG state, gathered on rank 0 (None elsewhere)."""
        own = {"trainer": self.trainer.state_dict(), "rng": capture_rng({})}
        return [own] if self.distributed is None else self.distributed.gather(own)

    def _checkpoint(self, epoch: int, ranks: List[dict]) -> dict:
        trainer = self.trainer
        state = {
            "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(), "epoch": epoch,
            "rng": ranks[0]["rng"], "config": self.config.to_dict(),
            "trainer": ranks[0]["trainer"], "best": dict(self.best),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if len(ranks) > 1:
            state["ranks"] = ranks
        return state

    # --- one epoch -------------------------------------------------------------------
    def _evaluate(self, epoch: int) -> Dict[str, Dict[str, float]]:
        cfg, results = self.config, {}
        generator = torch.Generator(self.trainer.device)
        for name, (x, y) in self.eval_sets.items():
            if x.shape[0] == 0:
                results[name] = {"clean_acc": float("nan"), "pgd_acc": float("nan")}
                continue
            generator.manual_seed(cfg.seed + EVAL_SEED_OFFSET * epoch)
            results[name] = evaluate_pgd(
                self.eval_model, x, y, self.trainer.framework.objective, cfg.eps, cfg.eps / 4,
                cfg.eval_steps, cfg.eval_batch_size, generator, cfg.norm,
                desc=f"eval {name} epoch {epoch}", show_progress=self.show_progress)
        return results

    def _record(self, epoch: int, stats: dict, evals: Dict[str, Dict[str, float]],
                seconds: float) -> dict:
        cfg = self.config
        record = {"epoch": epoch, "lr": stats["lr"], "loss": stats["loss"],
                  "train_clean_acc": stats.get("train_clean_acc"),
                  "train_adv_acc": stats["train_adv_acc"]}
        for name, result in evals.items():
            record[f"{name}_clean_acc"], record[f"{name}_pgd_acc"] = result["clean_acc"], result["pgd_acc"]
        record.update({"eval_pgd_steps": cfg.eval_steps,
                       "eval_examples": int(self.eval_sets["test"][0].shape[0]),
                       "steps": stats["steps"], "precision": "bf16" if cfg.bf16 else "float32",
                       "channels_last": cfg.channels_last, "compile": cfg.compile,
                       "train_seconds": round(stats["train_seconds"], 3),
                       "seconds": round(seconds, 3), "threads": torch.get_num_threads()})
        return record

    def _epoch_line(self, record: dict) -> str:
        def acc(key: str) -> str:
            value = record.get(key)
            return "-" if value is None else f"{value:.3f}"

        pgd = f"PGD-{record['eval_pgd_steps']}"
        parts = [f"epoch {record['epoch']}/{self.config.epochs}", f"lr {record['lr']:.4g}",
                 f"loss {record['loss']:.4f}",
                 f"train adv {acc('train_adv_acc')} clean {acc('train_clean_acc')}"]
        parts += [f"{name} clean {acc(f'{name}_clean_acc')} {pgd} {acc(f'{name}_pgd_acc')}"
                  for name in self.eval_sets]
        return "  ".join(parts + [f"{record['seconds']:.1f}s"])

    def run(self, log: Callable[[str], None] = print) -> dict:
        """Train the remaining epochs; append metrics, write checkpoints, log TensorBoard
        scalars (with ``tensorboard``) and, at the end, training_curves.png; return a summary."""
        cfg, started = self.config, time.perf_counter()
        tracker = progress.active()
        own = None
        if tracker is None:
            own = tracker = progress.Tracker(self.planned_units(),
                                             mode="auto" if self.show_progress else "off")
        tracker.unit_costs.update(self.unit_costs())
        writer = self._tensorboard() if self.is_main else None
        try:
            with own if own is not None else contextlib.nullcontext():
                for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
                    self._train_one(epoch, log, writer)
        finally:
            if writer is not None:
                writer.close()
            if self.is_main:
                self._plot_curves(log)
        if self.distributed is not None:
            self.distributed.barrier()  # rank 0's files are written when any rank returns
        return self._summary(time.perf_counter() - started)

    def _train_one(self, epoch: int, log: Callable[[str], None], writer) -> None:
        t0 = time.perf_counter()
        stats = self.trainer.train_epoch(epoch)
        evals = self._evaluate(epoch) if self.is_main else None
        ranks = self._rank_states()
        if not self.is_main:
            return
        measured = self._record(epoch, stats, evals, time.perf_counter() - t0)
        record = finite_or_none(measured)  # what metrics.jsonl holds: null for NaN / inf
        self._write(METRICS, lambda path: append_line(path, strict_json(record)))
        chosen, best = record[f"{self.selects_on}_pgd_acc"], self.best.get("pgd_acc")
        improved = not self.best or (chosen is not None and (best is None or chosen > best))
        if improved:
            self.best = {"epoch": epoch, "on": self.selects_on, "pgd_acc": chosen,
                         "clean_acc": record[f"{self.selects_on}_clean_acc"]}
        state = self._checkpoint(epoch, ranks)
        if improved:
            self._write(BEST, lambda path: save_checkpoint(path, state))
        self._write(LAST, lambda path: save_checkpoint(path, state))
        if writer is not None:
            _log_scalars(writer, record)
        log(self._epoch_line(measured))

    def _write(self, name: str, write: Callable[[Path], None]) -> None:
        """``write(out / name)``; an OSError becomes :class:`RunWriteError` saying what to do."""
        path = self.out / name
        try:
            write(path)
        except OSError as error:
            last = self.out / LAST
            then = (f"{last} still holds the last finished epoch: continue with --resume --out "
                    f"{self.out}") if last.exists() else "then run the command again"
            raise RunWriteError(f"cannot write {path} ({error.strerror or error}): free some "
                                f"space or fix the folder, {then}") from None

    def _tensorboard(self):
        if not self.config.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(str(self.out / TENSORBOARD))

    def _records(self) -> List[dict]:
        path = self.out / METRICS
        try:
            return read_json_lines(path)[0] if path.exists() else []
        except ValueError:  # a damaged file: the summary and curves go without it
            return []

    def _plot_curves(self, log: Callable[[str], None]) -> None:
        from heat_fast.training.curves import plot_training_curves

        records = self._records()
        if not records:
            return
        cfg = self.config
        title = (f"{cfg.framework}{' + HE' if cfg.he else ''} on {cfg.dataset} ({cfg.model}), "
                 f"eps {format_eps(cfg.eps)} {cfg.norm}")
        try:
            plot_training_curves(records, self.out / CURVES, title)
        except ImportError:
            log(f"note: matplotlib is not installed, so {CURVES} was not written "
                "(pip install 'heat_fast[plot]')")
        except OSError as error:
            log(f"note: {CURVES} was not written ({error.strerror or error})")

    def _summary(self, seconds: float) -> dict:
        records = self._records() if self.is_main else []
        curves = self.out / CURVES
        return {"out": str(self.out), "epochs": self.config.epochs,
                "final": records[-1] if records else {}, "best": self.best,
                "seconds_this_session": round(seconds, 3), "checkpoint": str(self.out / LAST),
                "curves": str(curves) if curves.exists() else None,
                "threads": torch.get_num_threads(), "config": self.config.to_dict()}


def _log_scalars(writer, record: dict) -> None:
    """Every number of an epoch's record as a TensorBoard scalar: train/… (with loss and lr),
    test/…, val/…, and run/… for the rest (steps, seconds, threads)."""
    for key, value in record.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        group, _, name = key.partition("_")
        if key in ("loss", "lr"):
            tag = f"train/{key}"
        else:
            tag = f"{group}/{name}" if group in ("train", "test", "val") and name else f"run/{key}"
        writer.add_scalar(tag, value, record["epoch"])
    writer.flush()


def _restore(run: TrainingRun, state: dict, path: Path) -> None:
    trainer, ctx = run.trainer, run.distributed
    ranks = state.get("ranks") or [state]
    world_size = 1 if ctx is None else ctx.world_size
    if len(ranks) != world_size:
        raise CheckpointError(f"cannot resume from {path}: it was written by {len(ranks)} "
                              f"process(es); resume with the same number (got {world_size})")
    own = ranks[0 if ctx is None else ctx.rank]
    try:
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.load_state_dict(own["trainer"])
        if run.ema is not None:
            run.ema.load_state_dict(state["ema"])
        restore_rng(own["rng"], {})
        run.start_epoch, run.best = int(state["epoch"]), _best_record(state.get("best"))
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot resume from {path}: its state does not fit the run it "
                              f"describes ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _best_record(saved: Optional[dict]) -> dict:
    """A checkpoint's ``best`` entry; checkpoints before validation splits chose on the test set
    and named the keys ``test_pgd_acc`` / ``test_clean_acc``."""
    best = dict(saved or {})
    if best and "pgd_acc" not in best:
        best = {"epoch": best["epoch"], "on": "test", "pgd_acc": best["test_pgd_acc"],
                "clean_acc": best["test_clean_acc"]}
    return best


def _read_metrics(path: Path) -> Tuple[List[dict], Optional[str]]:
    """(records, a warning about a torn last line or None); CheckpointError for damage."""
    if not path.exists():
        return [], None
    try:
        records, torn = read_json_lines(path)
    except ValueError as error:
        raise CheckpointError(f"cannot resume: {error}") from None
    if any(not isinstance(r.get("epoch"), int) for r in records):
        raise CheckpointError(f"cannot resume: a line of {path} has no integer 'epoch': repair "
                              "or delete that line")
    warning = None if torn is None else (
        f"warning: dropped the last line of {path}, cut short by an interrupted write: "
        f"{torn[:60]!r}")
    return records, warning


def _truncate_metrics(records: List[dict], path: Path, epoch: int) -> None:
    """Keep the metrics of epochs 1..``epoch`` (those the resumed checkpoint holds)."""
    kept = [r for r in records if r["epoch"] <= epoch]
    atomic_write_text(path, "".join(strict_json(r) + "\n" for r in kept))


def _writes_files() -> bool:
    """True on the process that writes the run's files: rank 0, or the only process."""
    return not launched_by_torchrun() or os.environ.get("RANK", "0") == "0"


def prepare(config: TrainConfig, resume_values: Optional[Dict[str, object]] = None,
            resume: bool = False, overwrite: bool = False, progress: bool = True,
            dist_backend: Optional[str] = None, dry_run: bool = False) -> TrainingRun:
    """Validate, load data and (with ``resume``) the checkpoint ``config.out/last.pt``;
    build model, optimizer, scheduler and trainer. Writes nothing but the output folder
    (and, with ``dry_run``, nothing at all).

    With ``resume`` the saved config is used, updated by ``resume_values``
    (see :func:`resume_config`). Launched by torchrun, joins the process group
    (``dist_backend``: default nccl on CUDA, gloo on CPU; see
    :func:`heat_fast.training.distributed.setup`); call :meth:`TrainingRun.close` when done.
    Raises ConfigError, DatasetError, CheckpointError, DistributedError, OutputFolderError
    (another run holds ``out``, or it cannot be written) or FileNotFoundError (the
    ValueError, RuntimeError and OSError kinds) or BackendUnavailableError with a message
    for the user.
    """
    if not config.out:
        raise ConfigError("--out DIR is required: the folder for metrics.jsonl and checkpoints")
    out = Path(config.out).expanduser()
    owner = claim(out, COMMAND) if _writes_files() and not dry_run else None
    try:
        run = _prepare(config, out, resume_values, resume, overwrite, progress, dist_backend,
                       dry_run)
    except BaseException:
        if owner is not None:
            owner.release()
        raise
    run.output_claim = owner
    if owner is not None:
        run.notes[:0] = [n for n in (owner.note, owner.remove_stale_temp_files()) if n]
    return run


def _resumed(out: Path, resume_values: Dict[str, object]) -> Tuple[dict, TrainConfig]:
    """The checkpoint ``out/last.pt`` and the config the resumed run continues with."""
    path = out / LAST
    state = load_checkpoint(path, map_location="cpu")
    config = resume_config(state["config"], dict(resume_values, out=str(out))).resolved()
    done = state["epoch"]
    if not isinstance(done, int) or isinstance(done, bool) or done < 0:
        raise CheckpointError(f"{path}: its epoch count {done!r} is not an integer >= 0")
    if config.epochs < done:
        raise ConfigError(f"--epochs {config.epochs} is fewer than the {done} epochs the run in "
                          f"{out} has already trained: to train it longer, pass --resume "
                          f"--epochs N with N > {done}")
    return state, config


def _prepare(config: TrainConfig, out: Path, resume_values: Optional[Dict[str, object]],
             resume: bool, overwrite: bool, progress: bool, dist_backend: Optional[str],
             dry_run: bool) -> TrainingRun:
    state = None
    if resume:
        state, config = _resumed(out, dict(resume_values or {}))
    elif (out / LAST).exists() and not overwrite:
        raise ConfigError(f"{out / LAST} already exists: pass --resume to continue that run, "
                          "--overwrite to start over, or another --out")
    else:
        config = config.resolved()
    try:
        resolve_backend(config.backend, torch.device(config.device), torch.float32)
    except ValueError as error:  # HEAT_FAST_BACKEND names no backend
        raise ConfigError(str(error)) from None
    if config.tensorboard:
        _check_tensorboard()
    workers = config.workers if config.workers is not None else min(MAX_DEFAULT_WORKERS, usable_cpus())
    data = load_dataset_for(config.to_dict(), workers=workers)
    config = dataclasses.replace(config, num_classes=data.num_classes,
                                 in_channels=data.in_channels, image_size=data.image_size,
                                 mean=list(data.mean), std=list(data.std))
    ctx = setup(config.device, dist_backend)
    try:
        run = _build(config, data, out, state, ctx, progress, dry_run)
    except BaseException:
        if ctx is not None:
            ctx.close()
        raise
    folder = getattr(data, "extra", {}).get("path")
    if folder:
        given = "data_dir" in (resume_values or {}) or not resume
        run.data_source = (f"data: {config.dataset} from {folder} "
                           f"({'--data-dir' if given else 'the data_dir saved in the checkpoint'})")
    return run


def _check_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: "
                          "pip install 'heat_fast[tensorboard]'") from None


def _build(config: TrainConfig, data: Union[Dataset, ImageFolder], out: Path,
           state: Optional[dict], ctx: Optional[Distributed], show_progress: bool,
           dry_run: bool) -> TrainingRun:
    rank, world_size = (0, 1) if ctx is None else (ctx.rank, ctx.world_size)
    validation = None
    if config.val_split:
        data, validation = data.split_validation(config.val_split, config.seed + VAL_SEED_OFFSET)
    if world_size > 1 and (config.batch_size % world_size or config.batch_size > data.train_size):
        raise ConfigError(f"batch_size {config.batch_size} is the global batch: it must be "
                          f"divisible by the {world_size} process(es) and at most the "
                          f"{data.train_size} training examples")
    device = torch.device(config.device) if ctx is None else ctx.device
    _seed_everything(config.seed)
    model = build_model(config.model, config.num_classes, config.he, config.in_channels,
                        config.image_size, config.mean, config.std,
                        weight_norm_mode(config.weight_norm)).to(device)
    optimizer = _optimizer(config, model)
    loader = data.train_loader(config.batch_size, torch.Generator().manual_seed(config.seed),
                               rank, world_size, device)
    iters = min(len(loader), config.max_steps_per_epoch or len(loader))
    scheduler = build_scheduler(optimizer, config.schedule, config.epochs, iters,
                                config.milestones, config.gamma,
                                warmup_iters=round(config.warmup_epochs * iters))
    augment = None
    if config.crop_padding or config.flip:
        augment = Augment(config.crop_padding, config.flip,
                          torch.Generator(device).manual_seed(rank_seed(config.seed + 2, rank)))
    trainer = Trainer(
        model, optimizer, loader, config.framework, he=config.he, scale=config.scale,
        margin=config.margin, eps=config.eps, alpha=config.alpha, steps=config.steps,
        backend=config.backend, bf16=config.bf16, channels_last=config.channels_last,
        compile=config.compile,
        scheduler=scheduler, scheduler_interval="batch", augment=augment, device=device,
        seed=rank_seed(config.seed + 1, rank), max_steps_per_epoch=config.max_steps_per_epoch,
        progress=show_progress, distributed=ctx, sync_bn=config.sync_bn,
        start=config.start, eval_mode=config.bn_eval, norm=config.norm,
        label_smoothing=config.label_smoothing,
        **{"trades": {"beta": config.beta}, "alp": {"alp_weight": config.alp_weight}}.get(config.framework, {}),
    )
    ema = None
    if config.ema:
        ema = WeightEMA(model, config.ema)
        optimizer.register_step_post_hook(lambda *_: ema.update(model))
    eval_sets = {}
    for name, source in (("test", data), ("val", validation)):
        if source is not None:
            x, y = source.test_subset(config.eval_examples)
            eval_sets[name] = (x.to(device), y.to(device))
    run = TrainingRun(config, trainer, eval_sets, out, ema=ema, show_progress=show_progress,
                      steps_per_epoch=iters)
    if state is not None:
        _restore(run, state, out / LAST)
        run.resumed_threads = state["config"].get("threads")
    if dry_run or not run.is_main:
        return run
    out.mkdir(parents=True, exist_ok=True)
    if state is not None:
        records, warning = _read_metrics(out / METRICS)
        if warning:
            run.notes.append(warning)
        _truncate_metrics(records, out / METRICS, run.start_epoch)
    else:
        for stale in (METRICS, CURVES):
            if (out / stale).exists():
                (out / stale).unlink()
    return run
