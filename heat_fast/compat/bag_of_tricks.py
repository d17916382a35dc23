"""Bag of Tricks for AT (github.com/P2333/Bag-of-Tricks-for-AT, ``train_cifar.py``): its
label-smoothing criterion and its HE training loss on the fused
:func:`heat_fast.ops.cos_margin_cross_entropy`.

BoT's ``LabelSmoothingLoss(smoothing=ε)`` puts 1 − ε on the label and ε/(C − 1) on every other
class; torch's (and heat_fast's) ``label_smoothing`` puts 1 − ε' + ε'/C and ε'/C, so the
two agree for ε' = ε·C/(C − 1) (:func:`heat_fast.ops.smoothing_from_other_classes`). Its HE
run (``--use_FNandWN``) trains on ``criterion(s·out − s·m·onehot(y), y)`` with the model's
outputs ``out`` (cosines for its WideResNet; s₀·cos for its PreActResNet18, which BoT scales
by s once more, and so does :func:`he_loss`), which is CE(s·(out − m·onehot(y)), y).
Results agree with the public formulas to float32 rounding (tests/test_compat.py).
"""
from __future__ import annotations

from torch import Tensor, nn

from heat_fast.ops import cos_margin_cross_entropy, smoothing_from_other_classes


class LabelSmoothingLoss(nn.Module):
    """Replaces BoT's ``LabelSmoothingLoss(classes=10, smoothing=0.0, dim=-1)``: the mean over
    the batch of −Σ_j t_j·log softmax(pred)_j with t_y = 1 − smoothing and t_j =
    smoothing/(classes − 1) elsewhere, for pred (B, classes). A pred whose class dimension is
    not ``classes`` raises ValueError (BoT's own would silently use a target that does not sum
    to 1)."""

    def __init__(self, classes: int = 10, smoothing: float = 0.0, dim: int = -1):
        super().__init__()
        if dim not in (-1, 1):
            raise ValueError(f"dim must be -1 or 1 (pred is (B, classes)), got {dim}")
        self.cls, self.smoothing, self.dim = classes, smoothing, dim
        self.label_smoothing = smoothing_from_other_classes(smoothing, classes)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.dim() != 2 or pred.shape[1] != self.cls:
            raise ValueError(f"pred must have shape (B, {self.cls}) for classes={self.cls}, "
                             f"got {tuple(pred.shape)}")
        return cos_margin_cross_entropy(pred, target, scale=1.0, margin=0.0,
                                        label_smoothing=self.label_smoothing)


def he_loss(robust_output: Tensor, y: Tensor, s_FN: float = 15.0, m_FN: float = 0.2,
            labelsmoothvalue: float = 0.0) -> Tensor:
    """BoT's HE training loss ``criterion(s_FN·robust_output − m_FN·s_FN·onehot(y), y)``, with
    ``criterion`` its cross-entropy (``labelsmoothvalue`` 0) or its
    ``LabelSmoothingLoss(smoothing=labelsmoothvalue)``, for robust_output (B, C); defaults are
    BoT's ``--s_FN``, ``--m_FN`` and ``--labelsmoothvalue``."""
    smoothing = smoothing_from_other_classes(labelsmoothvalue, robust_output.shape[-1])
    return cos_margin_cross_entropy(robust_output, y, scale=s_FN, margin=m_FN,
                                    label_smoothing=smoothing)
