"""How a framework turns a model and a batch into logits and losses, HE on or off.

With HE the model must expose ``features(x)`` and ``head.weight`` (C, D); the losses use
the fused :func:`heat_fast.he_cross_entropy` on the features, and "logits" are the raw
cosines. Without HE only ``model(x)`` is used and the losses are plain cross-entropy.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat_fast import _checks
from heat_fast.ops import he_cross_entropy, he_logits


class Outputs:
    """A forward pass: ``logits`` (cosines with HE, computed lazily from the features)."""

    def __init__(self, logits: Optional[Tensor] = None, features: Optional[Tensor] = None,
                 weight: Optional[Tensor] = None):
        self._logits, self.features, self.weight = logits, features, weight

    @property
    def logits(self) -> Tensor:
        if self._logits is None:
            self._logits = he_logits(self.features, self.weight)
        return self._logits


@dataclass(frozen=True)
class Objective:
    """Loss settings: ``he`` head, HE ``scale`` s and ``margin`` m, op ``backend``, ``bf16``,
    and ``label_smoothing`` of the training (outer) losses."""

    he: bool = False
    scale: float = 15.0
    margin: float = 0.2
    backend: str = "auto"
    bf16: bool = False
    label_smoothing: float = 0.0

    def __post_init__(self):
        _checks.check_scale_margin(self.scale, self.margin)

    def autocast(self, device: torch.device) -> ContextManager:
        """bf16 autocast on ``device`` when enabled, else a no-op context."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def forward(self, model: nn.Module, x: Tensor) -> Outputs:
        """Run the model once (under autocast when enabled)."""
        with self.autocast(x.device):
            if not self.he:
                return Outputs(logits=model(x))
            if not hasattr(model, "features") or not hasattr(model, "head"):
                raise TypeError("he=True needs a model with features(x) and head.weight "
                                "(e.g. heat_fast.models.build_model(..., he=True))")
            return Outputs(features=model.features(x), weight=model.head.weight)

    def cross_entropy(self, out: Outputs, y: Tensor, margin: bool,
                      reduction: str = "mean") -> Tensor:
        """CE(s·(cos − m·1_y)) with HE (m only if ``margin``), else CE on the logits.
        ``margin`` marks a training (outer) loss: only those get ``label_smoothing``."""
        smoothing = self.label_smoothing if margin else 0.0
        if self.he:
            return he_cross_entropy(out.features, out.weight, y, scale=self.scale,
                                    margin=self.margin if margin else 0.0,
                                    reduction=reduction, label_smoothing=smoothing,
                                    backend=self.backend)
        return F.cross_entropy(out.logits.float(), y, reduction=reduction,
                               label_smoothing=smoothing)

    def scaled_logits(self, out: Outputs) -> Tensor:
        """s·cos without margin with HE (what TRADES' KL compares), else the logits."""
        return self.scale * out.logits if self.he else out.logits.float()

    def craft_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The inner-maximization CE: on s·cos without margin with HE, else on logits."""
        return self.cross_entropy(self.forward(model, x), y, margin=False)
