"""Adversarial attacks for honest robustness evaluation (SPEC §4).

Every attack is called as ``attack(model, x, y) -> x_adv`` (see
:mod:`heat_fast.attacks.core` for the contract) and moves its iterates with the fused
:func:`heat_fast.pgd_step` / :func:`heat_fast.random_init`. :func:`build_attack` makes one
from a name such as ``"pgd20-cw"``, ``"apgd-t"``, ``"fab-t"`` or ``"square"``. APGD-T, FAB-T and
Square complete AutoAttack's standard set (APGD-CE, APGD-T, FAB-T, Square); the official
package itself is ``"autoattack"``.
"""
from heat_fast.attacks.apgd import APGD, APGDT
from heat_fast.attacks.autoattack import AutoAttack, AutoAttackUnavailableError
from heat_fast.attacks.core import Attack, BallAttack, eval_mode, predict
from heat_fast.attacks.ensemble import Ensemble
from heat_fast.attacks.fab import FAB
from heat_fast.attacks.fgsm import FGSM
from heat_fast.attacks.iterative import IterativeAttack
from heat_fast.attacks.losses import (LOSSES, ce_loss, cw_loss, dlr_loss, dlr_targeted_loss,
                                      get_loss)
from heat_fast.attacks.mim import MIM
from heat_fast.attacks.pgd import PGD
from heat_fast.attacks.registry import build_attack
from heat_fast.attacks.square import Square

__all__ = [
    "APGD", "APGDT", "Attack", "AutoAttack", "AutoAttackUnavailableError", "BallAttack",
    "Ensemble", "FAB", "FGSM", "IterativeAttack", "LOSSES", "MIM", "PGD", "Square",
    "build_attack", "ce_loss", "cw_loss", "dlr_loss", "dlr_targeted_loss", "eval_mode",
    "get_loss", "predict",
]
