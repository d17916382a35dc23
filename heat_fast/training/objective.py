"""How a framework turns a model and a batch into logits and losses, HE on or off.

With HE the model must expose ``features(x)`` and ``head.weight`` (C, D); the losses use
the fused :func:`heat_fast.he_cross_entropy` on the features, and "logits" are the raw
cosines. Without HE only ``model(x)`` is used and the losses are plain cross-entropy.

Under bf16 autocast only the model runs in bf16: the HE loss and head get the features as
float32, cross-entropy gets float32 logits, and input gradients stay float32 (bf16 has
float32's exponent range, so no gradient underflows to a zero sign). With ``compile`` the
model's forward runs through one process-wide function compiled by ``torch.compile`` (one
graph per model, mode and precision); a DDP-wrapped training model stays eager.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat_fast import _checks
from heat_fast.ops import he_cross_entropy, he_logits
from heat_fast.training.distributed import unwrap


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
    """Loss settings: ``he`` head, HE ``scale`` s and ``margin`` m, op ``backend``,
    ``label_smoothing`` of the training (outer) losses; how the model runs: ``bf16``
    autocast, ``compile`` (torch.compile of the forward, and of the frameworks' attack step)."""

    he: bool = False
    scale: float = 15.0
    margin: float = 0.2
    backend: str = "auto"
    bf16: bool = False
    label_smoothing: float = 0.0
    compile: bool = False

    def __post_init__(self):
        _checks.check_scale_margin(self.scale, self.margin)

    @property
    def compute_dtype(self) -> Optional[torch.dtype]:
        """The autocast dtype the model runs under (torch.bfloat16 or None)."""
        return torch.bfloat16 if self.bf16 else None

    def autocast(self, device: torch.device) -> ContextManager:
        """bf16 autocast on ``device`` when enabled, else a no-op context."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def forward(self, model: nn.Module, x: Tensor) -> Outputs:
        """Run the model once (under autocast when enabled); HE features come back float32."""
        if self.he and not (hasattr(model, "features") and hasattr(model, "head")):
            raise TypeError("he=True needs a model with features(x) and head.weight "
                            "(e.g. heat_fast.models.build_model(..., he=True))")
        compiled = self.compile and unwrap(model) is model and not torch.compiler.is_compiling()
        with self.autocast(x.device):
            out = (_compiled_run() if compiled else _run)(model, x, self.he)
        if not self.he:
            return Outputs(logits=out)
        return Outputs(features=out.float(), weight=model.head.weight)

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
