"""The native backend: loader for the compiled extension heat_fast._C (not built yet)."""
from __future__ import annotations

from typing import Optional

import torch


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    return "the extension heat_fast._C is not built"

BUILD_INFO: dict = {}
