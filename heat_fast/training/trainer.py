"""The training loop: any model, optimizer and loader of (x, y) batches, any framework."""
from __future__ import annotations

import contextlib
import inspect
import time
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from heat_fast.training import precision
from heat_fast.training.allocator import keep_freed_memory
from heat_fast.training.config import FRAMEWORK_DEFAULTS
from heat_fast.reference import WeightNorm
from heat_fast.training.distributed import Distributed, unwrap
from heat_fast.training.frameworks import Framework, build_framework
from heat_fast.training.frameworks.base import StepStats
from heat_fast.training.objective import Objective

SCHEDULER_INTERVALS = ("batch", "epoch")


def _takes_argument(fn: Callable, name: str) -> bool:
    """Whether ``fn`` accepts keyword argument ``name`` (by name or through ``**kwargs``)."""
    parameters = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)

class Trainer:
    """Adversarially train ``model`` with ``framework`` (a name or a :class:`Framework`).

    ``train_loader`` is any iterable of (x, y) with x in [0, 1]; batches are moved to
    ``device`` (default: the model's), optionally augmented by ``augment(x)`` and made
    channels_last. Attack settings (``eps``, ``alpha``, ``steps``, ``start``, ``beta``,
    ``alp_weight``, ``eval_mode``; None = the framework's default: α = ε/4, 10 steps, FastAT
    α = 1.25ε, FreeAT α = ε and 4 replays) and loss settings (``he`` — default ``model.he`` —,
    ``scale`` and ``margin`` — default SPEC §3's per framework —, ``weight_norm`` — default
    the HE head's own mode —, ``backend``, ``bf16``, ``label_smoothing``, ``compile``) are
    passed to :func:`build_framework` when ``framework`` is a name.
    ``scheduler`` steps per batch or per epoch (``scheduler_interval``). :meth:`state_dict`
    holds everything but the model and optimizer that a bit-exact resume needs (framework
    state, generators, loader order).

    ``bf16`` and ``channels_last`` of None (the default) mean the fastest correct choice for
    the device (:func:`heat_fast.training.precision.fast_path`: on with native bf16
    hardware); :attr:`fast_path` says what was chosen and why. On a CPU the process's malloc
    is tuned once to keep freed activations mapped (:mod:`heat_fast.training.allocator`).
    PGD-AT, FastAT and FreeAT make no clean forward of their own, so the clean training
    accuracy is measured by an extra no-grad forward on every ``clean_acc_every``-th batch
    (the first of each epoch included); ALP and TRADES measure it on every batch from their
    clean forward.

    With ``distributed`` (see :mod:`heat_fast.training.distributed`) each rank trains on its
    loader's shard through :attr:`train_model` (``model`` in DDP, BatchNorm made SyncBatchNorm
    if ``sync_bn``); :attr:`model` stays the plain model, buffers are synced from rank 0
    after every step, epoch statistics are summed over the ranks and only rank 0 shows progress.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 train_loader: Iterable[Tuple[Tensor, Tensor]],
                 framework: Union[str, Framework] = "pgd-at", *, he: Optional[bool] = None,
                 scale: Optional[float] = None, margin: Optional[float] = None,
                 eps: float = 8 / 255,
                 alpha: Optional[float] = None, steps: Optional[int] = None,
                 backend: str = "auto", bf16: Optional[bool] = None,
                 channels_last: Optional[bool] = None, compile: bool = False,
                 clean_acc_every: int = 10,
                 scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
                 scheduler_interval: str = "epoch",
                 augment: Optional[Callable[[Tensor], Tensor]] = None,
                 device: Optional[Union[str, torch.device]] = None, seed: int = 0,
                 max_steps_per_epoch: Optional[int] = None, progress: bool = True,
                 distributed: Optional[Distributed] = None, sync_bn: bool = False,
                 label_smoothing: float = 0.0, weight_norm: Optional[WeightNorm] = None,
                 **framework_options):
        if scheduler_interval not in SCHEDULER_INTERVALS:
            raise ValueError(f"scheduler_interval must be one of {SCHEDULER_INTERVALS}, got {scheduler_interval!r}")
        if int(clean_acc_every) < 1:
            raise ValueError(f"clean_acc_every must be >= 1, got {clean_acc_every}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model, self.optimizer, self.train_loader = model, optimizer, train_loader
        self.scheduler, self.scheduler_interval = scheduler, scheduler_interval
        self.clean_acc_every = int(clean_acc_every)
        if isinstance(framework, Framework):
            bf16 = framework.objective.bf16
        self.fast_path = precision.resolve(self.device, bf16, channels_last)
        self.augment, self.channels_last = augment, self.fast_path.channels_last
        self.max_steps_per_epoch, self.distributed = max_steps_per_epoch, distributed
        self.progress = progress and (distributed is None or distributed.is_main)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        if isinstance(framework, Framework):
            self.framework = framework
        else:
            he_scale, he_margin = FRAMEWORK_DEFAULTS.get(framework, (15.0, 0.2))[:2]
            objective = Objective(getattr(unwrap(model), "he", False) if he is None else he,
                                  he_scale if scale is None else scale,
                                  he_margin if margin is None else margin, backend,
                                  self.fast_path.bf16, label_smoothing, compile, weight_norm)
            settings = dict(framework_options, eps=eps, alpha=alpha, generator=self.generator)
            if steps is not None:
                settings["steps"] = steps
            self.framework = build_framework(framework, objective, **settings)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.train_model = model if distributed is None else distributed.wrap(model, sync_bn)

    def leave_process_group(self) -> None:
        """Unwrap :attr:`train_model` and leave the process group (idempotent; no-op when not
        distributed); call it when done training."""
        if self.distributed is None:
            return
        self.train_model = self.model
        self.distributed.close()

    def _prepare(self, x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
        x = x.to(self.device, non_blocking=True).float()
        y = y.to(self.device, non_blocking=True).long()
        if self.augment is not None:
            x = self.augment(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _num_steps(self) -> Optional[int]:
        try:
            n = len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:
            n = None
        if self.max_steps_per_epoch is None:
            return n
        return self.max_steps_per_epoch if n is None else min(n, self.max_steps_per_epoch)

    def _progress_bar(self, epoch: int):
        if not self.progress:
            return contextlib.nullcontext(None)
        from heat_fast import progress
        return progress.bar(self._num_steps(), f"epoch {epoch}", kind="train")

    def train_epoch(self, epoch: int = 1) -> Dict[str, float]:
        """One pass over the loader (at most ``max_steps_per_epoch`` batches).

        Returns {"loss", "train_clean_acc", "train_adv_acc", "lr", "steps",
        "train_seconds"} (over all ranks when distributed; the clean accuracy over the batches
        where it was measured, see the class docstring); the model is left in train mode.
        """
        self.train_model.train()
        start = time.perf_counter()
        loss_sum = clean = adv = torch.zeros((), device=self.device)
        count = clean_count = steps = 0
        lr = self.optimizer.param_groups[0]["lr"]
        with self._progress_bar(epoch) as bar:
            for x, y in self.train_loader:
                if self.max_steps_per_epoch is not None and steps >= self.max_steps_per_epoch:
                    break
                x, y = self._prepare(x, y)
                lr = self.optimizer.param_groups[0]["lr"]
                stats = self._train_step(x, y, measure_clean=steps % self.clean_acc_every == 0)
                if self.distributed is not None:
                    self.train_model.sync_buffers()
                if self.scheduler is not None and self.scheduler_interval == "batch":
                    self.scheduler.step()
                loss_sum = loss_sum + stats.loss * stats.count
                clean, adv = clean + stats.clean_correct, adv + stats.adv_correct
                count, clean_count = count + stats.count, clean_count + stats.clean_count
                steps += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(stats.loss):.4f}",
                                    clean=f"{float(clean) / max(clean_count, 1):.3f}",
                                    adv=f"{float(adv) / count:.3f}", lr=f"{lr:.4g}")
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self.scheduler.step()
        if self.distributed is not None:
            totals = torch.tensor([float(loss_sum), float(clean), float(adv), count, clean_count],
                                  dtype=torch.float64)
            loss_sum, clean, adv, count, clean_count = self.distributed.all_reduce_sum(totals).tolist()
        denom = max(count, 1)
        return {"loss": float(loss_sum) / denom,
                "train_clean_acc": float(clean) / clean_count if clean_count else None,
                "train_adv_acc": float(adv) / denom, "lr": lr, "steps": steps,
                "train_seconds": time.perf_counter() - start}

    def _train_step(self, x: Tensor, y: Tensor, measure_clean: bool) -> StepStats:
        """The framework's step; ``measure_clean`` is passed only to a ``train_step`` that
        takes it (a subclass written against the four-argument signature measures as it
        does)."""
        step = self.framework.train_step
        if _takes_argument(step, "measure_clean"):
            return step(self.train_model, self.optimizer, x, y, measure_clean=measure_clean)
        return step(self.train_model, self.optimizer, x, y)

    def fit(self, epochs: int, start_epoch: int = 0,
            on_epoch_end: Optional[Callable[[int, Dict[str, float]], None]] = None
            ) -> List[Dict[str, float]]:
        """Train epochs ``start_epoch + 1 .. epochs``; ``on_epoch_end(epoch, stats)`` after each."""
        history = []
        for epoch in range(start_epoch + 1, epochs + 1):
            stats = self.train_epoch(epoch)
            history.append(stats)
            if on_epoch_end is not None:
                on_epoch_end(epoch, stats)
        return history

    def state_dict(self) -> dict:
        """Framework state plus the attack generator, the augmenter and the loader order."""
        state = {"framework": self.framework.state_dict(),
                 "generator": self.generator.get_state()}
        for key, part in (("augment", self.augment), ("loader", self.train_loader)):
            if hasattr(part, "state_dict"):
                state[key] = part.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.framework.load_state_dict(state["framework"])
        self.generator.set_state(state["generator"])
        for key, part in (("augment", self.augment), ("loader", self.train_loader)):
            if key in state:
                part.load_state_dict(state[key])
