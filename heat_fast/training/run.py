"""A ``heat-fast train`` run: configuration → data, model, optimizer, trainer → epochs with
metrics, atomic checkpoints, a best checkpoint and a bit-exact resume.

:func:`prepare` does every check and every read before anything is written (bad input
never touches an existing checkpoint); :meth:`TrainingRun.run` trains.

Under ``torchrun`` every process runs the same code: each trains on its shard of every
global batch (``batch_size`` is the global batch), rank 0 alone evaluates, writes metrics and
checkpoints (the plain model's weights, so they load anywhere) and logs; a checkpoint also
holds every rank's own trainer and RNG state under ``ranks`` for a resume with the same
number of processes.
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from heat_fast.data import Augment, Dataset, TensorLoader, load_dataset
from heat_fast.models import build_model
from heat_fast.ops import resolve_backend
from heat_fast.training.checkpoint import (CheckpointError, capture_rng, load_checkpoint,
                                           restore_rng, save_checkpoint)
from heat_fast.training.config import RESUMABLE_OVERRIDES, ConfigError, TrainConfig
from heat_fast.training.distributed import Distributed, rank_seed, setup
from heat_fast.training.evaluate import evaluate_pgd
from heat_fast.training.presets import preset
from heat_fast.training.schedules import build_scheduler
from heat_fast.training.trainer import Trainer

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"
EVAL_SEED_OFFSET = 1_000_003


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
        elif key != "preset" and getattr(config, key, None) != value:
            raise ConfigError(f"--resume continues the saved run, whose {key} is "
                              f"{getattr(config, key, None)!r}; got {value!r} (only "
                              f"{', '.join(RESUMABLE_OVERRIDES)} may change)")
    return config


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TrainingRun:
    """Everything a run needs, built by :func:`prepare`."""

    def __init__(self, config: TrainConfig, trainer: Trainer, test_x: torch.Tensor,
                 test_y: torch.Tensor, out: Path, start_epoch: int = 0,
                 best: Optional[dict] = None):
        self.config, self.trainer, self.out = config, trainer, out
        self.test_x, self.test_y = test_x, test_y
        self.start_epoch, self.best = start_epoch, best or {}

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.model

    @property
    def distributed(self) -> Optional[Distributed]:
        return self.trainer.distributed

    @property
    def is_main(self) -> bool:
        """True on the process that evaluates, writes and logs (rank 0, or the only one)."""
        return self.distributed is None or self.distributed.is_main

    def close(self) -> None:
        """Leave the process group, if any."""
        self.trainer.leave_process_group()

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
        if len(ranks) > 1:
            state["ranks"] = ranks
        return state

    def _evaluate(self, epoch: int) -> Dict[str, float]:
        cfg = self.config
        if self.test_x.shape[0] == 0:
            return {"clean_acc": float("nan"), "pgd_acc": float("nan")}
        generator = torch.Generator(self.trainer.device).manual_seed(cfg.seed + EVAL_SEED_OFFSET * epoch)
        return evaluate_pgd(self.model, self.test_x, self.test_y, self.trainer.framework.objective,
                            cfg.eps, cfg.eps / 4, cfg.eval_steps, cfg.eval_batch_size, generator)

    def run(self, log: Callable[[str], None] = print) -> dict:
        """Train the remaining epochs; append metrics, write checkpoints; return a summary."""
        cfg, started = self.config, time.perf_counter()
        for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            stats = self.trainer.train_epoch(epoch)
            test = self._evaluate(epoch) if self.is_main else None
            ranks = self._rank_states()
            if not self.is_main:
                continue
            record = {"epoch": epoch, "lr": stats["lr"], "loss": stats["loss"],
                      "train_clean_acc": stats["train_clean_acc"],
                      "train_adv_acc": stats["train_adv_acc"], "test_clean_acc": test["clean_acc"],
                      "test_pgd_acc": test["pgd_acc"], "eval_pgd_steps": cfg.eval_steps,
                      "eval_examples": int(self.test_x.shape[0]), "steps": stats["steps"],
                      "precision": "bf16" if cfg.bf16 else "float32",
                      "channels_last": cfg.channels_last, "compile": cfg.compile,
                      "train_seconds": round(stats["train_seconds"], 3),
                      "seconds": round(time.perf_counter() - t0, 3)}
            with open(self.out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
            improved = not self.best or test["pgd_acc"] > self.best["test_pgd_acc"]
            if improved:
                self.best = {"epoch": epoch, "test_pgd_acc": test["pgd_acc"],
                             "test_clean_acc": test["clean_acc"]}
            state = self._checkpoint(epoch, ranks)
            if improved:
                save_checkpoint(self.out / BEST, state)
            save_checkpoint(self.out / LAST, state)
            log(f"epoch {epoch}/{cfg.epochs}  lr {stats['lr']:.4g}  loss {stats['loss']:.4f}  "
                f"train clean {stats['train_clean_acc']:.3f} adv {stats['train_adv_acc']:.3f}  "
                f"test clean {test['clean_acc']:.3f} PGD-{cfg.eval_steps} {test['pgd_acc']:.3f}  "
                f"{record['seconds']:.1f}s")
        if self.distributed is not None:
            self.distributed.barrier()  # rank 0's files are written when any rank returns
        return self._summary(time.perf_counter() - started)

    def _summary(self, seconds: float) -> dict:
        lines = (self.out / METRICS).read_text().splitlines() if (self.out / METRICS).exists() else []
        final = json.loads(lines[-1]) if lines else {}
        return {"out": str(self.out), "epochs": self.config.epochs, "final": final,
                "best": self.best, "seconds_this_session": round(seconds, 3),
                "checkpoint": str(self.out / LAST)}


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
        restore_rng(own["rng"], {})
        run.start_epoch, run.best = int(state["epoch"]), dict(state.get("best") or {})
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot resume from {path}: its state does not fit the run it "
                              f"describes ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _truncate_metrics(path: Path, epoch: int) -> None:
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["epoch"] <= epoch]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def prepare(config: TrainConfig, resume_values: Optional[Dict[str, object]] = None,
            resume: bool = False, overwrite: bool = False, progress: bool = True,
            dist_backend: Optional[str] = None) -> TrainingRun:
    """Validate, load data and (with ``resume``) the checkpoint ``config.out/last.pt``;
    build model, optimizer, scheduler and trainer. Writes nothing but the output folder.

    With ``resume`` the saved config is used, updated by ``resume_values``
    (see :func:`resume_config`). Launched by torchrun, joins the process group
    (``dist_backend``: default nccl on CUDA, gloo on CPU; see
    :func:`heat_fast.training.distributed.setup`); call :meth:`TrainingRun.close` when done.
    Raises ConfigError, DatasetError, CheckpointError, DistributedError or FileNotFoundError
    (the ValueError, RuntimeError and OSError kinds) or BackendUnavailableError with a
    message for the user.
    """
    if not config.out:
        raise ConfigError("--out DIR is required: the folder for metrics.jsonl and checkpoints")
    out = Path(config.out).expanduser()
    state = None
    if resume:
        state = load_checkpoint(out / LAST, map_location="cpu")
        config = resume_config(state["config"], dict(resume_values or {}, out=str(out)))
    elif (out / LAST).exists() and not overwrite:
        raise ConfigError(f"{out / LAST} already exists: pass --resume to continue that run, "
                          "--overwrite to start over, or another --out")
    config = config.resolved()
    resolve_backend(config.backend, torch.device(config.device), torch.float32)
    options = {"image_size": config.image_size or 224} if config.dataset == "imagenet" else {}
    data = load_dataset(config.dataset, config.data_dir, **options)
    config = dataclasses.replace(config, num_classes=data.num_classes,
                                 in_channels=data.in_channels, image_size=data.image_size,
                                 mean=list(data.mean), std=list(data.std))
    ctx = setup(config.device, dist_backend)
    try:
        return _build(config, data, out, state, ctx, progress)
    except BaseException:
        if ctx is not None:
            ctx.close()
        raise


def _build(config: TrainConfig, data: Dataset, out: Path, state: Optional[dict],
           ctx: Optional[Distributed], progress: bool) -> TrainingRun:
    rank, world_size = (0, 1) if ctx is None else (ctx.rank, ctx.world_size)
    if world_size > 1 and (config.batch_size % world_size or config.batch_size > data.train_x.shape[0]):
        raise ConfigError(f"batch_size {config.batch_size} is the global batch: it must be "
                          f"divisible by the {world_size} process(es) and at most the "
                          f"{data.train_x.shape[0]} training examples")
    device = torch.device(config.device) if ctx is None else ctx.device
    _seed_everything(config.seed)
    model = build_model(config.model, config.num_classes, config.he, config.in_channels,
                        config.image_size, config.mean, config.std).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    loader = TensorLoader(data.train_x.to(device), data.train_y.to(device), config.batch_size,
                          shuffle=True, generator=torch.Generator().manual_seed(config.seed),
                          rank=rank, world_size=world_size)
    iters = min(len(loader), config.max_steps_per_epoch or len(loader))
    scheduler = build_scheduler(optimizer, config.schedule, config.epochs, iters,
                                config.milestones, config.gamma)
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
        progress=progress, distributed=ctx, sync_bn=config.sync_bn,
        start=config.start, eval_mode=config.bn_eval,
        **{"trades": {"beta": config.beta}, "alp": {"alp_weight": config.alp_weight}}.get(config.framework, {}),
    )
    n_eval = min(config.eval_examples, data.test_x.shape[0])
    test_x, test_y = data.test_x[:n_eval].to(device), data.test_y[:n_eval].to(device)
    run = TrainingRun(config, trainer, test_x, test_y, out)
    if run.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if state is not None:
        _restore(run, state, out / LAST)
        if run.is_main:
            _truncate_metrics(out / METRICS, run.start_epoch)
    elif run.is_main and (out / METRICS).exists():
        (out / METRICS).unlink()
    return run
