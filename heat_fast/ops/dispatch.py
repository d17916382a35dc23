"""Backend selection (SPEC §2.3).

Backends:
- ``reference``: plain torch autograd (heat_fast.reference), runs everywhere.
- ``triton``: Triton kernels (heat_fast.triton_kernels) for CUDA tensors, and for CPU
  tensors when ``TRITON_INTERPRET=1`` was set before triton was imported.
- ``native``: the compiled extension heat_fast._C (heat_fast.native): C++ CPU kernels, and
  CUDA kernels when it was built with CUDA.

Every fast backend module exposes the same kernel functions (see heat_fast.ops.he_loss and
heat_fast.ops.pgd for their contract) and ``unavailable_reason(device, dtype)``, which
returns None when it can run, else a sentence saying why not.

``backend="auto"`` (the default of every op) is overridden by the environment variable
``HEAT_FAST_BACKEND``; otherwise it picks the first available backend of
``AUTO_ORDER[device type]``. An explicit backend that cannot run raises
:class:`BackendUnavailableError` with the reason.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Dict, Optional, Tuple

import torch

from heat_fast import native

BACKENDS: Tuple[str, ...] = ("reference", "triton", "native")
ENV_VAR = "HEAT_FAST_BACKEND"
AUTO_ORDER: Dict[str, Tuple[str, ...]] = {
    "cuda": ("triton", "native", "reference"),
    "cpu": ("native", "reference"),
}
# triton's is imported on first use (triton costs ~0.2 s at import)
_MODULES: Dict[str, str] = {"triton": "heat_fast.triton_kernels", "native": "heat_fast.native"}


class BackendUnavailableError(RuntimeError):
    """Raised when a requested backend cannot run on the given tensors."""


def kernels(name: str) -> ModuleType:
    """The module holding backend ``name``'s kernel functions."""
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {tuple(_MODULES)} for a kernel op, got {name!r}")
    module = _LOADED.get(name)
    return module if module is not None else _load(name)


_LOADED: Dict[str, ModuleType] = {"native": native}


def _load(name: str) -> ModuleType:
    _LOADED[name] = importlib.import_module(_MODULES[name])
    return _LOADED[name]


@native.constant_under_compile
def unavailable_reason(name: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """None when backend ``name`` can run on (device, dtype), else why it cannot. A constant
    under torch.compile: evaluated, and the backend's module imported, outside the graph."""
    if name == "reference":
        return None
    return kernels(name).unavailable_reason(device, dtype)


def _requested(backend: Optional[str]) -> str:
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be 'auto' or one of {BACKENDS}, got "
                        f"{type(backend).__name__} {backend!r}")
    requested = (backend or "auto").lower()
    if requested == "auto":
        requested = (os.environ.get(ENV_VAR) or "auto").lower()
        source = f"environment variable {ENV_VAR}"
    else:
        source = "backend"
    if requested != "auto" and requested not in BACKENDS:
        raise ValueError(f"{source} must be 'auto' or one of {BACKENDS}, got {requested!r}")
    return requested


def resolve_backend(backend: Optional[str], device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs an op on (device, dtype): see the module docstring."""
    requested = _requested(backend)
    if requested == "auto":
        for name in AUTO_ORDER.get(device.type, ("reference",)):
            if unavailable_reason(name, device, dtype) is None:
                return name
        return "reference"
    reason = unavailable_reason(requested, device, dtype)
    if reason is not None:
        raise BackendUnavailableError(
            f"backend {requested!r} cannot run on {device.type} tensors of {dtype}: {reason}"
        )
    return requested


CPU_OP_BACKENDS: Tuple[str, ...] = ("reference", "native")


def resolve_cpu_op_backend(op: str, backend: Optional[str], x: torch.Tensor) -> str:
    """The backend of an op whose only fast kernels are the C++ CPU ones (``op`` names it in
    errors): "auto" is "native" for CPU tensors the extension takes, else "reference", and
    HEAT_FAST_BACKEND=reference or native overrides it (other values leave it "auto"); an
    explicit "native" that cannot run raises :class:`BackendUnavailableError`."""
    requested = (backend or "auto").lower()
    if requested == "auto":
        requested = (os.environ.get(ENV_VAR) or "auto").lower()
        if requested not in CPU_OP_BACKENDS:
            requested = "auto"
    elif requested not in CPU_OP_BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {CPU_OP_BACKENDS} for {op}, got "
                         f"{backend!r}")
    reason = unavailable_reason("native", x.device, x.dtype)
    if x.device.type != "cpu":
        reason = f"no native {op} kernel for {x.device.type} tensors (CPU only)"
    if requested == "auto":
        return "native" if reason is None else "reference"
    if requested == "native" and reason is not None:
        raise BackendUnavailableError(f"backend 'native' cannot run {op} on "
                                      f"{x.device.type} tensors of {x.dtype}: {reason}")
    return requested


def describe() -> Dict[str, Dict[str, str]]:
    """For each backend and device type, 'ok' or the reason it cannot run (float32)."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    table: Dict[str, Dict[str, str]] = {}
    for name in BACKENDS:
        table[name] = {}
        for device in devices:
            reason = unavailable_reason(name, device, torch.float32)
            table[name][device.type] = "ok" if reason is None else reason
    return table
