"""What every attack shares: the base classes, eval mode, input gradients and the
per-example worst-case tracker.

Contract of every :class:`Attack` call ``attack(model, x, y) -> x_adv``: x (B, ...) float in
the box, y (B,) int labels; the model runs in eval mode and every module's previous mode is
restored afterwards; ``x`` and ``y`` are never modified; input gradients come from
``torch.autograd.grad`` (parameters' ``.grad`` stay untouched); x_adv lies in the ε-ball
around x and in the box. :class:`BallAttack` attacks only the examples the model classifies
correctly, stops attacking an example once it is fooled and keeps that first fooling input;
an example never fooled gets its highest-loss iterate over all steps and runs. A run is a
restart, or for targeted attacks (APGD-T) one target class (:func:`target_runs`). Run r's
random start is drawn for the whole batch from a generator seeded with ``seed``, so more
restarts or (at a fixed step size) more steps can only fool more examples. Projected steps
go through the fused :func:`heat_fast.pgd_step` (:func:`project` is a zero step).
"""
from __future__ import annotations

import abc
import contextlib
import functools
import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from heat_fast import _checks
from heat_fast.attacks.losses import LossFn
from heat_fast.ops import pgd_step, random_init


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module of ``model`` in eval mode; restore each one's own mode on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """``requires_grad`` off for every parameter of ``model`` inside the block, so backward
    passes compute input gradients only and never reach ``.grad``; each parameter's own flag
    is restored on exit, also when the block raises."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor) -> Tensor:
    """Predicted labels argmax model(x) (B,), without building a graph."""
    return model(x).argmax(dim=1)


def loss_and_grad(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor,
                  need_grad: bool = True) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Logits, per-example loss and (if ``need_grad``) d loss / d x at x, all detached."""
    if not need_grad:
        with torch.no_grad():
            logits = model(x)
            return logits, loss_fn(logits, y), None
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = loss_fn(logits, y)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return logits.detach(), loss.detach(), grad


class WorstCase:
    """Per-example worst case over every point an attack visits.

    x itself counts as visited. An example counts as fooled from the first visited point
    the model misclassifies, and that point is kept; for an unfooled example the visited
    point of highest loss is kept.
    """

    def __init__(self, x: Tensor, y: Tensor, clean_logits: Tensor, clean_loss: Tensor):
        self.x_adv = x.clone()
        self.y = y
        self.fooled = clean_logits.argmax(dim=1) != y
        self.best_loss = clean_loss.float()

    def robust_indices(self) -> Tensor:
        return (~self.fooled).nonzero().squeeze(1)

    def update(self, idx: Tensor, x: Tensor, logits: Tensor, loss: Tensor) -> Tensor:
        """Record points x (rows idx of the batch); return whether each row is now fooled."""
        was_fooled = self.fooled[idx]
        fooled_now = (logits.argmax(dim=1) != self.y[idx]) & ~was_fooled
        better = ~was_fooled & ~fooled_now & (loss > self.best_loss[idx])
        take = fooled_now | better
        self.x_adv[idx[take]] = x[take].to(self.x_adv.dtype)
        self.best_loss[idx[better]] = loss[better].float()
        self.fooled[idx[fooled_now]] = True
        return was_fooled | fooled_now


def check_batch(x: Tensor, y: Tensor) -> None:
    """x (B, ...) floating, y (B,) integer labels on x's device."""
    _checks.check_float("x", x)
    if x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (B, ...) with B >= 1, got {tuple(x.shape)}")
    if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise TypeError("y must be a tensor of integer class labels")
    if y.shape != x.shape[:1]:
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    _checks.check_same_device(x=x, y=y)


def check_eps(eps: float, name: str = "eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{name} must be a finite float >= 0, got {eps!r}")
    return float(eps)


def check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class Attack(abc.ABC):
    """An attack: ``attack(model, x, y) -> x_adv`` with the contract of the module docstring."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        check_batch(x, y)
        with eval_mode(model):
            return self._attack(model, x.detach(), y.detach().long())

    @abc.abstractmethod
    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """x_adv for a checked batch, with the model already in eval mode."""


class BallAttack(Attack):
    """A white-box attack in the ε-ball (``norm`` "linf" or "l2") intersected with ``clip``.

    Subclasses implement :meth:`_restart`, one run from a start point on the still-robust
    rows ``idx``, recording every point they evaluate in the tracker.
    """

    def __init__(self, eps: float, loss: LossFn, norm: str = "linf", restarts: int = 1,
                 random_start: bool = True, clip: Optional[Sequence[float]] = (0.0, 1.0),
                 seed: int = 0, backend: str = "auto"):
        self.eps = check_eps(eps)
        self.loss_fn = loss
        self.norm = _checks.check_norm(norm)
        self.restarts = check_count("restarts", restarts)
        if restarts > 1 and not random_start:
            raise ValueError("restarts > 1 needs random_start=True (restarts would repeat)")
        self.random_start = random_start
        self.clip = None if clip is None else _checks.check_clip(clip)
        self.seed = int(seed)
        self.backend = backend

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            clean_logits = model(x)
        targets = self.run_targets(clean_logits)
        tracker = WorstCase(x, y, clean_logits, self.loss_for(targets[0])(clean_logits, y))
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        for target in targets:
            start = (random_init(x, self.eps, self.norm, self.clip, generator, self.backend)
                     if self.random_start else x)
            idx = tracker.robust_indices()
            if idx.numel() == 0:
                break
            self._restart(model, x[idx], y[idx], start[idx], idx, tracker,
                          None if target is None else target[idx])
        return tracker.x_adv

    def run_targets(self, clean_logits: Tensor) -> List[Optional[Tensor]]:
        """One entry per run: the target classes (B,) of a targeted run, None for an
        untargeted one. Untargeted attacks make ``restarts`` runs."""
        return [None] * self.restarts

    def loss_for(self, target: Optional[Tensor]) -> LossFn:
        """The per-example loss (logits, y) -> (B,) of a run with ``target`` (None:
        untargeted, the attack's loss itself)."""
        if target is None:
            return self.loss_fn
        return functools.partial(self.loss_fn, target=target)

    def project(self, point: Tensor, x: Tensor) -> Tensor:
        """The projection of ``point`` onto the ε-ball around x and the box (a zero step)."""
        return project(point, x, self.eps, self.norm, self.clip, self.backend)

    @abc.abstractmethod
    def _restart(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, idx: Tensor,
                 tracker: WorstCase, target: Optional[Tensor]) -> None:
        """Attack rows ``idx`` (inputs x, labels y, targets ``target`` or None) from the
        start x_adv."""


class SearchAttack(Attack):
    """An attack made of runs that each search, on the examples still robust, for inputs in
    the ε-ball (``norm``) and the box ``clip`` that the model misclassifies (FAB, Square).

    Subclasses implement :meth:`_search` and may override :meth:`run_targets`. Examples
    never broken are returned unchanged; a broken one gets the first point that broke it.
    """

    def __init__(self, eps: float, norm: str = "linf", restarts: int = 1,
                 clip: Sequence[float] = (0.0, 1.0), seed: int = 0, backend: str = "auto"):
        self.eps = check_eps(eps)
        self.norm = _checks.check_norm(norm)
        self.restarts = check_count("restarts", restarts)
        if clip is None:
            raise ValueError(f"{type(self).__name__} needs a box: clip must be (lo, hi), got None")
        self.clip = _checks.check_clip(clip)
        self.seed = int(seed)
        self.backend = backend

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            clean_logits = model(x)
        robust = clean_logits.argmax(dim=1) == y
        x_adv = x.clone()
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        for run, target in enumerate(self.run_targets(clean_logits)):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            found, points = self._search(model, x[idx], y[idx],
                                         None if target is None else target[idx],
                                         run % self.restarts, generator)
            x_adv[idx[found]] = points[found]
            robust[idx[found]] = False
        return x_adv

    def run_targets(self, clean_logits: Tensor) -> List[Optional[Tensor]]:
        """As :meth:`BallAttack.run_targets`: one entry per run, None when untargeted."""
        return [None] * self.restarts

    @abc.abstractmethod
    def _search(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor],
                restart: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        """One run on robust examples x (B, ...) with labels y and targets (or None);
        ``restart`` counts the runs of one target from 0. Returns (found (B,) bool,
        points (B, ...)) with points[found] misclassified, in the ball and the box."""


def project(point: Tensor, x: Tensor, eps: float, norm: str,
            clip: Optional[Tuple[float, float]], backend: str = "auto") -> Tensor:
    """``point`` projected onto the ``norm`` ε-ball around x, then clipped to the box: the
    fused :func:`heat_fast.pgd_step` with a zero gradient."""
    return pgd_step(point, torch.zeros_like(point), x, eps, 0.0, norm, clip, backend=backend)


def ranked_class(logits: Tensor, rank: int) -> Tensor:
    """The class with the ``rank``-th largest logit per example (rank 1 = the prediction),
    as AutoAttack's targeted attacks choose targets: rank 2, 3, ... of the clean logits."""
    return logits.topk(rank, dim=1).indices[:, rank - 1]


def target_runs(clean_logits: Tensor, n_targets: int, restarts: int) -> List[Optional[Tensor]]:
    """Targets for ``n_targets`` target classes (ranks 2 .. n_targets + 1 of the clean
    logits, at most C − 1 of them) times ``restarts`` runs each."""
    ranks = range(2, min(n_targets + 1, clean_logits.shape[1]) + 1)
    return [ranked_class(clean_logits, rank) for rank in ranks for _ in range(restarts)]


def keep_rows(keep: Tensor, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Every per-example tensor of ``state`` restricted to the rows where ``keep``."""
    if bool(keep.all()):
        return dict(state)
    return {name: value[keep] for name, value in state.items()}
