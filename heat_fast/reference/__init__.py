"""The reference backend: plain torch ops that read like SPEC §2 and define the semantics.

Every other backend is tested against these functions.
"""
from heat_fast.reference.he_loss import cos_margin_cross_entropy, he_cross_entropy, he_logits
from heat_fast.reference.pgd import pgd_delta_step, pgd_step, random_init

__all__ = ["cos_margin_cross_entropy", "he_cross_entropy", "he_logits", "pgd_delta_step", "pgd_step", "random_init"]
