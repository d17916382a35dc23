"""Public ops with backend dispatch; see heat_fast.ops.dispatch for how a backend is chosen."""
from heat_fast.ops.cos_loss import cos_margin_cross_entropy, smoothing_from_other_classes
from heat_fast.ops.dispatch import BACKENDS, BackendUnavailableError, resolve_backend
from heat_fast.ops.he_loss import he_cross_entropy, he_logits
from heat_fast.ops.pgd import pgd_delta_step, pgd_step, random_init

__all__ = [
    "BACKENDS", "BackendUnavailableError", "resolve_backend", "cos_margin_cross_entropy",
    "smoothing_from_other_classes", "he_cross_entropy", "he_logits", "pgd_delta_step", "pgd_step", "random_init",
]
