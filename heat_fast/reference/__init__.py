"""The reference backend: plain torch ops that read like SPEC §2 and define the semantics.

Every other backend is tested against these functions.
"""
from heat_fast.reference.affine_relu import affine_relu
from heat_fast.reference.he_loss import (
    WeightNorm,
    cos_margin_cross_entropy,
    he_cross_entropy,
    he_logits,
    resolve_weight_norm,
)
from heat_fast.reference.max_pool import max_pool2d
from heat_fast.reference.pgd import pgd_delta_step, pgd_step, random_init

__all__ = ["WeightNorm", "affine_relu", "cos_margin_cross_entropy", "he_cross_entropy", "he_logits",
           "max_pool2d", "pgd_delta_step", "pgd_step", "random_init", "resolve_weight_norm"]
