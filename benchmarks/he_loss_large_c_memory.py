"""Peak memory of one fwd+bwd of a large-class HE loss, measured in a fresh process.

    python benchmarks/he_loss_large_c_memory.py --impl chunked [--batch B --classes C --dim D
                                                 --dtype float32|bfloat16 --threads N]
    python benchmarks/he_loss_large_c_memory.py --table     # every case below, one process each

Implementations: ``chunked`` and ``unchunked`` (he_cross_entropy on the native backend with
chunked=True / False), ``reference`` (backend="reference"), ``linear_cross_entropy``
(torch.nn.functional.linear_cross_entropy, m = 0, where this torch has it).

Figure: the process's peak resident memory during the call (Linux: the peak is reset through
/proc/self/clear_refs just before it, then read from VmHWM) minus its resident memory before,
minus the gradients' own bytes (dX, dW): the memory beyond the inputs and their gradients. The
kernels are loaded on a small head first. Prints one JSON line per case, with the (B, C)
float32 buffer the unchunked path needs as the yardstick.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Dict, List, Optional

CASES = [(batch, classes, dtype) for dtype in ("float32", "bfloat16")
         for batch in (256, 1024) for classes in (32768, 131072)]
IMPLS = ("chunked", "unchunked", "reference", "linear_cross_entropy")


def _status_mib(key: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")


def _loss(impl: str):
    import torch.nn.functional as F

    import heat_fast as hf

    if impl == "linear_cross_entropy":
        return lambda x, w, y: F.linear_cross_entropy(x, w, y)
    backend = "reference" if impl == "reference" else "native"
    chunked = {"chunked": True, "unchunked": False}.get(impl)
    return lambda x, w, y: hf.he_cross_entropy(x, w, y, 15.0, 0.2, backend=backend,
                                               chunked=chunked)


def measure(impl: str, batch: int, classes: int, dim: int, dtype_name: str,
            threads: int) -> Dict[str, object]:
    """Runs in this process: the case's memory beyond its inputs and gradients (MiB)."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dim, generator=gen).to(dtype).requires_grad_(True)
    w = torch.randn(classes, dim, generator=gen).to(dtype).requires_grad_(True)
    y = torch.randint(0, classes, (batch,), generator=gen)
    loss = _loss(impl)
    small = min(classes, 1024)
    torch.autograd.grad(loss(x, w[:small], y % small), (x,))  # loads every kernel
    _reset_peak()
    before = _status_mib("VmRSS")
    gx, gw = torch.autograd.grad(loss(x, w, y), (x, w))
    grads = (gx.numel() * gx.element_size() + gw.numel() * gw.element_size()) / 2**20
    extra = _status_mib("VmHWM") - before - grads
    buffer = batch * classes * 4 / 2**20
    return dict(impl=impl, dtype=dtype_name, batch=batch, classes=classes, dim=dim,
                threads=threads, extra_mib=round(extra, 1), bc_float32_mib=buffer,
                of_bc_buffer=round(extra / buffer, 3))


def in_fresh_process(impl: str, batch: int, classes: int, dim: int, dtype: str,
                     threads: int) -> Dict[str, object]:
    done = subprocess.run(
        [sys.executable, __file__, "--impl", impl, "--batch", str(batch), "--classes",
         str(classes), "--dim", str(dim), "--dtype", dtype, "--threads", str(threads)],
        capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", choices=IMPLS, default="chunked")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=131072)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="every case and implementation")
    args = parser.parse_args(argv)
    if not args.table:
        print(json.dumps(measure(args.impl, args.batch, args.classes, args.dim, args.dtype,
                                 args.threads)))
        return 0
    for batch, classes, dtype in CASES:
        for impl in IMPLS:
            print(json.dumps(in_fresh_process(impl, batch, classes, args.dim, dtype,
                                              args.threads)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
