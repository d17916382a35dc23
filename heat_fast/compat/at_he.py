"""AT_HE (github.com/ShawnXYang/AT_HE, CIFAR-10 part: ``losses.py`` and ``he.py``) on the
fused ops: ``pgd_loss``, ``alp_loss``, ``trades_loss`` and ``HELoss`` with the public
signatures, defaults and keyword names (``loss=``, ``beta=``, ``m=``, ``s=``), so the public
``train_adv_cifar10.py`` runs unchanged after swapping its import.

What the public functions do, and these do too: BN (every module) in eval mode while crafting,
then ``model.train()``; start x + 0.001·N(0, I) from the CPU generator, not clipped; for
``distance='l_inf'`` ``perturb_steps`` L∞ steps x' = clip₀¹(Π_ε(x + α·sign ∇)) (one fused
:func:`heat_fast.ops.pgd_step` each); ``optimizer.zero_grad()``; the returned loss is for the
caller's backward. With an ``*_he`` loss the model returns cosines (its WideResNet with
``use_FNandWN=True``) and every cross-entropy is AT_HE's HELoss CE(s·(cos − m·onehot(y)), y),
here the fused O(B·C) :func:`heat_fast.ops.cos_margin_cross_entropy`; crafting uses it with
margin 0 (PGD, ALP) or KL on s·cos (TRADES).

Differences: the clean probabilities TRADES crafts against are computed once per call (the
public loop recomputes the identical eval-mode value every step); ``loss`` and ``distance``
values the public code does not handle raise ValueError (it raises RuntimeError for an
unknown ``loss`` and silently skips the attack for a ``distance`` other than 'l_inf'), and so
does an ``*_he`` loss without s or m. Floating point: the fused loss forms log-sum-exp stably where HELoss
exponentiates s·cos directly; results agree to float32 rounding (tests/test_compat.py).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat_fast.compat._common import check_choice, kl_sum, linf_pgd, normal_start
from heat_fast.ops import cos_margin_cross_entropy

LOSSES = {"pgd": ("pgd", "pgd_he"), "alp": ("alp", "alp_he"), "trades": ("trades", "trades_he")}


class HELoss(nn.Module):
    """AT_HE's ``he.HELoss(s)``: ``forward(logits, labels, cm=0)`` is the mean of
    CE(s·(cos − cm·onehot(y)), y) of cosines (B, C), computed by the fused
    :func:`heat_fast.ops.cos_margin_cross_entropy` (O(B·C); AT_HE's loop over rows is
    O(B²·C) to gather the other classes)."""

    def __init__(self, s: Optional[float] = None):
        super().__init__()
        self.s = s

    def forward(self, logits: Tensor, labels: Tensor, cm: float = 0) -> Tensor:
        if self.s is None:
            raise ValueError("HELoss needs the scale s (HELoss(s=...)), got None")
        return cos_margin_cross_entropy(logits, labels, scale=self.s, margin=cm)


def _cross_entropy(he: bool, s: Optional[float], output: Tensor, y: Tensor,
                   margin: Optional[float]) -> Tensor:
    """CE on logits, or with HE AT_HE's HELoss on cosines with margin ``margin``."""
    return HELoss(s)(output, y, cm=margin) if he else F.cross_entropy(output, y)


def _craft(model: nn.Module, x_natural: Tensor, step_size: float, epsilon: float,
           perturb_steps: int, loss_at) -> Tensor:
    """The public crafting block: eval mode, normal start, L∞ steps, train mode, clip."""
    model.eval()
    x_adv = linf_pgd(loss_at, normal_start(x_natural), x_natural, step_size, epsilon,
                     perturb_steps)
    model.train()
    return torch.clamp(x_adv, 0.0, 1.0)


def _variant(family: str, loss: str, distance: str, m: Optional[float],
             s: Optional[float]) -> bool:
    """Whether ``loss`` names the HE variant of ``family``; checks the arguments first."""
    check_choice("loss", loss, LOSSES[family])
    check_choice("distance", distance, ("l_inf",))
    he = loss.endswith("_he")
    if he and (s is None or m is None):
        raise ValueError(f"loss={loss!r} needs the scale s and the margin m, got s={s}, m={m}")
    return he


def pgd_loss(model: nn.Module, x_natural: Tensor, y: Tensor, optimizer: torch.optim.Optimizer,
             step_size: float = 0.003, epsilon: float = 0.031, perturb_steps: int = 10,
             beta: float = 1.0, distance: str = "l_inf", loss: str = "pgd",
             m: Optional[float] = None, s: Optional[float] = None) -> Tensor:
    """Replaces AT_HE ``losses.pgd_loss``: PGD-AT, CE(model(x_adv), y), or with
    ``loss='pgd_he'`` HELoss(s) with margin m (crafting on HELoss without margin). ``beta``
    is unused, as in the public code. See the module docstring for the shared semantics."""
    he = _variant("pgd", loss, distance, m, s)
    x_adv = _craft(model, x_natural, step_size, epsilon, perturb_steps,
                   lambda xa: _cross_entropy(he, s, model(xa), y, 0.0))
    optimizer.zero_grad()
    return _cross_entropy(he, s, model(x_adv), y, m)


def alp_loss(model: nn.Module, x_natural: Tensor, y: Tensor, optimizer: torch.optim.Optimizer,
             step_size: float = 0.003, epsilon: float = 0.031, perturb_steps: int = 10,
             beta: float = 1.0, distance: str = "l_inf", loss: str = "alp",
             m: Optional[float] = None, s: Optional[float] = None) -> Tensor:
    """Replaces AT_HE ``losses.alp_loss``: ½CE(clean) + ½CE(adv) + β·MSE(out(clean),
    out(adv)), the CEs HELoss(s) with margin m for ``loss='alp_he'`` and the MSE on the
    model's outputs as they are (unscaled cosines with HE); crafting as :func:`pgd_loss`.
    Two train-mode forwards, clean then adversarial, as the public code."""
    he = _variant("alp", loss, distance, m, s)
    x_adv = _craft(model, x_natural, step_size, epsilon, perturb_steps,
                   lambda xa: _cross_entropy(he, s, model(xa), y, 0.0))
    optimizer.zero_grad()
    logits = model(x_natural)
    logits_adv = model(x_adv)
    robust = 0.5 * _cross_entropy(he, s, logits, y, m) + 0.5 * _cross_entropy(he, s, logits_adv,
                                                                              y, m)
    return robust + beta * F.mse_loss(logits, logits_adv)


def trades_loss(model: nn.Module, x_natural: Tensor, y: Tensor,
                optimizer: torch.optim.Optimizer, step_size: float = 0.003,
                epsilon: float = 0.031, perturb_steps: int = 10, beta: float = 1.0,
                distance: str = "l_inf", loss: str = "trades", m: Optional[float] = None,
                s: Optional[float] = None) -> Tensor:
    """Replaces AT_HE ``losses.trades_loss`` (AT_HE's own TRADES, not the official one of
    :mod:`heat_fast.compat.trades`): crafting maximizes Σ KL(p(x) ‖ p(x′)), the loss is
    CE(clean) + β·Σ KL(p(x) ‖ p(x_adv))/B with p the softmax of the outputs (of s·cos and
    CE = HELoss(s) with margin m for ``loss='trades_he'``). Two train-mode forwards (clean,
    adversarial); the KL target keeps its gradient, as in the public code."""
    he = _variant("trades", loss, distance, m, s)
    scale = s if he else 1.0
    model.eval()
    with torch.no_grad():
        clean_probs = F.softmax(scale * model(x_natural), dim=1)
    x_adv = _craft(model, x_natural, step_size, epsilon, perturb_steps,
                   lambda xa: kl_sum(scale * model(xa), clean_probs))
    optimizer.zero_grad()
    logits = model(x_natural)
    logits_adv = model(x_adv)
    robust = kl_sum(scale * logits_adv, F.softmax(scale * logits, dim=1)) / len(x_natural)
    return _cross_entropy(he, s, logits, y, m) + beta * robust
