"""``heat-fast info``: versions, what was built, and what each backend supports."""
from __future__ import annotations

import argparse
import os
import platform
from typing import List

import torch

import heat_fast
from heat_fast import native
from heat_fast.ops import dispatch

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def _cpu_isa() -> str:
    try:
        return native.cpu_isa() or "not loaded"
    except ValueError as error:
        return str(error)


def report() -> str:
    """A human-readable report of versions, build metadata and backend support."""
    lines = [
        f"heat_fast {heat_fast.__version__}",
        f"python {platform.python_version()}, torch {torch.__version__}, triton {_triton_version()}",
        f"CUDA available: {torch.cuda.is_available()}"
        + (f" ({torch.cuda.get_device_name()}, CUDA {torch.version.cuda})" if torch.cuda.is_available() else ""),
        f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!s}  "
        f"{dispatch.ENV_VAR}={os.environ.get(dispatch.ENV_VAR, '')!s}",
        "native build: " + (", ".join(f"{k}={v}" for k, v in native.BUILD_INFO.items())
                            if native.BUILD_INFO else "not built"),
        f"native CPU kernels: {_cpu_isa()}  "
        f"HEAT_FAST_CPU_ISA={os.environ.get('HEAT_FAST_CPU_ISA', '')!s}",
        "",
        "backend support (ok, or why not):",
    ]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for name in dispatch.BACKENDS:
        for device in devices:
            cells = []
            for dtype in DTYPES:
                reason = dispatch.unavailable_reason(name, device, dtype)
                cells.append(f"{str(dtype).replace('torch.', '')}: {'ok' if reason is None else reason}")
            lines.append(f"  {name:<9} {device.type:<4}  " + "; ".join(cells))
    for device in devices:
        lines.append(f"auto on {device.type}: {dispatch.resolve_backend('auto', device, torch.float32)}")
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    argparse.ArgumentParser(prog="heat-fast info", description=__doc__).parse_args(argv)
    print(report())
    return 0
