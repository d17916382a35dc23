"""How a framework turns a model and a batch into logits and losses, HE on or off.

With HE the model must expose ``features(x)`` and ``head.weight`` (C, D); the losses use
the fused :func:`heat_fast.he_cross_entropy` on the features, and "logits" are the raw
cosines. Without HE only ``model(x)`` is used and the losses are plain cross-entropy.

The weight-normalization mode of the HE head has one source of truth: the model's head.
An :class:`~heat_fast.HELinear` carries it (``weight_norm``: True differentiates through the
normalization, "project" is AT_HE's renormalize-in-place with no gradient through it; heat_fast
models take it from ``build_model(..., weight_norm=...)``) and ``Objective.weight_norm=None``
(the default) follows it. Set ``Objective.weight_norm`` only for a head that is not an
HELinear (a ported model's ``nn.Linear``, default True); a value that contradicts an HELinear
head raises ValueError instead of training in a mode other than the head's.

Under bf16 autocast only the model runs in bf16: the HE loss and head get the features as
float32, cross-entropy gets float32 logits, and input gradients stay float32 (bf16 has
float32's exponent range, so no gradient underflows to a zero sign). With ``compile`` the
model's forward runs through one process-wide function compiled by ``torch.compile`` (one
graph per model, mode and precision); a DDP-wrapped training model stays eager.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from heat_fast import _checks
from heat_fast.nn import HELinear
from heat_fast.ops import he_cross_entropy, he_logits
from heat_fast.reference import WeightNorm, resolve_weight_norm
from heat_fast.training.distributed import unwrap

# the mode names of configs and the command line -> the ops' ``weight_norm`` values
WEIGHT_NORM_MODES: Dict[str, WeightNorm] = {"differentiable": True, "project": "project"}


def weight_norm_mode(name: str) -> WeightNorm:
    """The ops' ``weight_norm`` value (True or "project") of a mode name of
    :data:`WEIGHT_NORM_MODES`; ValueError for any other name."""
    if name not in WEIGHT_NORM_MODES:
        raise ValueError(f"weight_norm must be one of {', '.join(WEIGHT_NORM_MODES)}, "
                         f"got {name!r}")
    return WEIGHT_NORM_MODES[name]


class Outputs:
    """A forward pass: ``logits`` (cosines with HE, computed lazily from the features and
    the head ``weight``, which the ops normalize if ``weight_norm``)."""

    def __init__(self, logits: Optional[Tensor] = None, features: Optional[Tensor] = None,
                 weight: Optional[Tensor] = None, weight_norm: bool = True):
        self._logits, self.features, self.weight = logits, features, weight
        self.weight_norm = weight_norm

    @property
    def logits(self) -> Tensor:
        if self._logits is None:
            self._logits = he_logits(self.features, self.weight, weight_norm=self.weight_norm)
        return self._logits


@dataclass(frozen=True)
class Objective:
    """Loss settings: ``he`` head, HE ``scale`` s and ``margin`` m, op ``backend``,
    ``label_smoothing`` of the training (outer) losses; how the model runs: ``bf16``
    autocast, ``compile`` (torch.compile of the forward, and of the frameworks' attack step).
    ``weight_norm``: the HE head's weight-normalization mode (module docstring; None = the
    head's own). ``craft_scale``: s of the crafting (inner) losses (None = ``scale``; 1
    crafts on unscaled cosines, as Bag of Tricks does)."""

    he: bool = False
    scale: float = 15.0
    margin: float = 0.2
    backend: str = "auto"
    bf16: bool = False
    label_smoothing: float = 0.0
    compile: bool = False
    weight_norm: Optional[WeightNorm] = None
    craft_scale: Optional[float] = None

    def __post_init__(self):
        _checks.check_scale_margin(self.scale, self.margin)
        if self.craft_scale is not None:
            _checks.check_scale_margin(self.craft_scale, 0.0)
        if not (self.weight_norm is None or isinstance(self.weight_norm, bool)
                or self.weight_norm == "project"):
            raise ValueError(f"weight_norm must be None (the head's), True, False or "
                             f"'project', got {self.weight_norm!r}")

    @property
    def compute_dtype(self) -> Optional[torch.dtype]:
        """The autocast dtype the model runs under (torch.bfloat16 or None)."""
        return torch.bfloat16 if self.bf16 else None

    @property
    def crafting_scale(self) -> float:
        """s of the crafting losses: ``craft_scale``, else ``scale``."""
        return self.scale if self.craft_scale is None else self.craft_scale

    def autocast(self, device: torch.device) -> ContextManager:
        """bf16 autocast on ``device`` when enabled, else a no-op context."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def head_weight_norm(self, model: nn.Module) -> WeightNorm:
        """The weight-normalization mode for ``model``'s HE head (module docstring)."""
        head = model.head
        own = head.weight_norm if isinstance(head, HELinear) else None
        if self.weight_norm is None:
            return True if own is None else own
        if own is not None and own != self.weight_norm:
            raise ValueError(f"the objective's weight_norm={self.weight_norm!r} contradicts the "
                             f"model's HELinear head (weight_norm={own!r}): the head holds the "
                             "mode, so leave the objective's None, or build the model with "
                             f"weight_norm={self.weight_norm!r}")
        return self.weight_norm

    def he_model(self, model: nn.Module) -> nn.Module:
        """The module whose ``features(x)`` and ``head`` the HE losses use: ``model`` if it
        has them (a heat_fast DistributedModel runs features through DDP), else the plain
        model inside its nn.DataParallel / torch.compile wrappers (run on one device,
        uncompiled). A bare DistributedDataParallel is refused: a features forward outside
        it would skip DDP's gradient synchronisation."""
        net = model if hasattr(model, "features") and hasattr(model, "head") else unwrap(model)
        if isinstance(model, DistributedDataParallel) and net is not model:
            raise TypeError("he=True with a DistributedDataParallel model: wrap the plain model "
                            "with heat_fast.training.distributed.Distributed.wrap, whose "
                            "features(x) runs through DDP")
        if not (hasattr(net, "features") and hasattr(net, "head")):
            raise TypeError("he=True needs a model with features(x) and head.weight "
                            "(e.g. heat_fast.models.build_model(..., he=True))")
        return net

    def forward(self, model: nn.Module, x: Tensor) -> Outputs:
        """Run the model once (under autocast when enabled); HE features come back float32,
        with the head weight, projected in place first in mode "project" (as AT_HE's model
        does on every forward, so the weight is unit-norm for the losses of this forward)."""
        net = self.he_model(model) if self.he else model
        compiled = self.compile and unwrap(net) is net and not torch.compiler.is_compiling()
        with self.autocast(x.device):
            out = (_compiled_run() if compiled else _run)(net, x, self.he)
        if not self.he:
            return Outputs(logits=out)
        weight = net.head.weight
        return Outputs(features=out.float(), weight=weight,
                       weight_norm=resolve_weight_norm(weight, self.head_weight_norm(net)))

    def cross_entropy(self, out: Outputs, y: Tensor, margin: bool,
                      reduction: str = "mean") -> Tensor:
        """CE(s·(cos − m·1_y)) with HE, else CE on the logits. ``margin`` marks a training
        (outer) loss: only those get m and ``label_smoothing``; the others are crafting
        losses, on :attr:`crafting_scale`·cos."""
        smoothing = self.label_smoothing if margin else 0.0
        if self.he:
            return he_cross_entropy(out.features, out.weight, y,
                                    scale=self.scale if margin else self.crafting_scale,
                                    margin=self.margin if margin else 0.0,
                                    reduction=reduction, label_smoothing=smoothing,
                                    weight_norm=out.weight_norm, backend=self.backend)
        return F.cross_entropy(out.logits.float(), y, reduction=reduction,
                               label_smoothing=smoothing)

    def scaled_logits(self, out: Outputs, crafting: bool = False) -> Tensor:
        """s·cos without margin with HE (what TRADES' KL compares; :attr:`crafting_scale`
        when ``crafting``), else the logits."""
        if not self.he:
            return out.logits.float()
        return (self.crafting_scale if crafting else self.scale) * out.logits

    def craft_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The inner-maximization CE: on craft_scale·cos without margin with HE, else on
        logits."""
        return self.cross_entropy(self.forward(model, x), y, margin=False)


def _run(model: nn.Module, x: Tensor, features: bool) -> Tensor:
    """``model.features(x)`` or ``model(x)``."""
    return model.features(x) if features else model(x)


_COMPILED_RUN: Optional[Callable[[nn.Module, Tensor, bool], Tensor]] = None


def _compiled_run() -> Callable[[nn.Module, Tensor, bool], Tensor]:
    """:func:`_run` through torch.compile, made once per process (imports torch._dynamo)."""
    global _COMPILED_RUN
    if _COMPILED_RUN is None:
        _COMPILED_RUN = torch.compile(_run)
    return _COMPILED_RUN
