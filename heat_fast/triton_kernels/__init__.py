"""The triton backend (being written)."""
from __future__ import annotations

from typing import Optional

import torch


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    return "not written yet"
