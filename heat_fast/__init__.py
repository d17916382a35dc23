"""heat_fast: fast adversarial training with hypersphere embedding (HE).

Public ops (SPEC §2): :func:`he_logits`, :func:`he_cross_entropy`, :func:`pgd_step`,
:func:`pgd_delta_step`, :func:`random_init`; modules :class:`HELinear`, :class:`HECrossEntropyLoss`. Every op takes
``backend="auto" | "reference" | "triton" | "native"``.
"""
from heat_fast.nn import HECrossEntropyLoss, HELinear
from heat_fast.ops import (
    BACKENDS,
    BackendUnavailableError,
    he_cross_entropy,
    he_logits,
    pgd_delta_step,
    pgd_step,
    random_init,
    resolve_backend,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "BackendUnavailableError", "HECrossEntropyLoss", "HELinear",
    "he_cross_entropy", "he_logits", "pgd_delta_step", "pgd_step", "random_init",
    "resolve_backend",
    "__version__",
]
