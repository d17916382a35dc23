"""Small helpers shared by the Triton kernels' host code."""
from __future__ import annotations

import contextlib
import functools
import os
from typing import ContextManager

import torch
import triton.language as tl

_TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float64: tl.float64,
}
SIXTEEN_BIT = (torch.float16, torch.bfloat16)
# Streaming multiprocessors of an H100/H200, the grid size the tile plans aim for when no GPU
# can be asked (the sm_90 compile check plans for it too).
DEFAULT_SM_COUNT = 132


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def acc_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32: the dtype all kernel math runs in."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def tl_dtype(dtype: torch.dtype):
    """The triton.language dtype of a torch dtype."""
    return _TL_DTYPES[dtype]


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device: torch.device) -> int:
    """Programs a launch should have to occupy ``device``: its SM count on CUDA, 1 on the
    interpreter (each interpreted program costs about a millisecond of CPU)."""
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count(index)


def on_device(t: torch.Tensor) -> ContextManager:
    """Makes ``t``'s GPU the current device while kernels are launched (Triton launches on
    the current device); a no-op for CPU tensors."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()
