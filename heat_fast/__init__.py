"""heat_fast: fast adversarial training with hypersphere embedding (HE).

Public ops (SPEC §2): :func:`he_logits`, :func:`he_cross_entropy`,
:func:`cos_margin_cross_entropy` (the loss on cosines a model formed), :func:`pgd_step`,
:func:`pgd_delta_step`, :func:`random_init`; modules :class:`HELinear`, :class:`HECrossEntropyLoss`, :class:`CosineMarginLoss`. Every op takes
``backend="auto" | "reference" | "triton" | "native"``.
"""
from heat_fast.nn import CosineMarginLoss, HECrossEntropyLoss, HELinear
from heat_fast.ops import (
    BACKENDS,
    BackendUnavailableError,
    cos_margin_cross_entropy,
    he_cross_entropy,
    he_logits,
    pgd_delta_step,
    pgd_step,
    random_init,
    resolve_backend,
    smoothing_from_other_classes,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "BackendUnavailableError", "CosineMarginLoss", "HECrossEntropyLoss", "HELinear",
    "cos_margin_cross_entropy", "smoothing_from_other_classes",
    "he_cross_entropy", "he_logits", "pgd_delta_step", "pgd_step", "random_init",
    "resolve_backend",
    "__version__",
]
