"""``heat-fast info``: versions, what was built, and what each backend supports."""
from __future__ import annotations

import argparse
import os
import platform
from typing import List, Optional

import torch

import heat_fast
from heat_fast import native
from heat_fast.ops import dispatch, he_loss_chunked
from heat_fast.training import precision

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


def he_loss_path(batch: Optional[int], classes: Optional[int]) -> List[str]:
    """Which path he_cross_entropy takes: the rule, and for a given head its choice."""
    lines = [f"he_cross_entropy over many classes: the chunked path (no (B, C) buffers; triton "
             f"and native backends) when C >= {he_loss_chunked.CHUNKED_MIN_CLASSES} or the "
             f"(B, C) float32 buffer reaches {he_loss_chunked.CHUNKED_MIN_BYTES // 2**20} MiB; "
             "chunked=True/False forces it"]
    if classes is not None:
        batch = batch or 1
        chunk = he_loss_chunked.chunk_for(batch, classes, None)
        lines.append(f"  a head of B={batch}, C={classes}: "
                     + ("chunked" if chunk is not None else "unchunked (the fused (B, C) path)"))
    return lines


def report(batch: Optional[int] = None, classes: Optional[int] = None) -> str:
    """A human-readable report of versions, build metadata and backend support, and the HE loss
    path for a head of ``batch`` × ``classes`` when given."""
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
    for device in devices:
        path = precision.fast_path(device)
        lines.append(f"training on {device.type}: "
                     f"{precision.describe(device, path.bf16, path.channels_last)}")
    lines += he_loss_path(batch, classes)
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="heat-fast info", description=__doc__)
    parser.add_argument("--classes", type=int, help="say which HE loss path a head of C "
                        "classes takes")
    parser.add_argument("--batch", type=int, help="its batch size (default 1)")
    args = parser.parse_args(argv)
    for name in ("classes", "batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    print(report(args.batch, args.classes))
    return 0
