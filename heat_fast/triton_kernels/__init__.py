"""The triton backend: Triton kernels for CUDA tensors, and for CPU tensors under the
Triton interpreter (TRITON_INTERPRET=1 set before triton is imported)."""
from __future__ import annotations

from typing import Optional

import torch

try:
    import triton  # noqa: F401
except ImportError as error:
    _IMPORT_ERROR: Optional[str] = f"triton is not installed ({error}); pip install triton"
else:
    _IMPORT_ERROR = None
    from heat_fast.triton_kernels.common import interpreting
    from heat_fast.triton_kernels.he_loss import cos_ce_forward, he_ce_backward, he_ce_forward
    from heat_fast.triton_kernels.pgd import pgd_step_, random_init_

    from heat_fast.triton_kernels.he_loss_chunked import (  # noqa: I001 (own line: merges)
        he_ce_chunked_backward, he_ce_chunked_forward,
    )

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """None when the triton backend can run on (device, dtype), else why not."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if dtype not in SUPPORTED_DTYPES:
        return f"unsupported dtype {dtype}"
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA GPU is available"
    if device.type == "cpu":
        return None if interpreting() else (
            "Triton runs CPU tensors only under its interpreter: set TRITON_INTERPRET=1 "
            "before importing triton"
        )
    return f"no Triton support for {device.type} tensors"


__all__ = ["cos_ce_forward", "he_ce_backward", "he_ce_forward", "interpreting", "pgd_step_", "random_init_",
           "unavailable_reason"]
