"""Shared benchmark helpers: device choice, synchronised timing, backend availability.

Every benchmark is grouped by (op, shape, dtype, device) and carries its backend in
``extra_info`` so benchmarks/report.py can print each backend's ratio against the
reference measured in the same run. GPU-only cases skip cleanly on CPU.
"""
import time

import pytest
import torch

from heat_fast.ops import dispatch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = ("reference", "compiled-reference", "native", "triton")


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def skip_unless_runs(backend: str, device: str, dtype: torch.dtype) -> None:
    """Skip a case the backend cannot run, or that would only time an interpreter."""
    if backend == "triton" and device == "cpu":
        pytest.skip("Triton on CPU is the interpreter: correctness only, never timed")
    if backend == "compiled-reference":
        return
    reason = dispatch.unavailable_reason(backend, torch.device(device), dtype)
    if reason is not None:
        pytest.skip(f"{backend} unavailable: {reason}")


def run_timed(benchmark, fn, device: str, group: str, backend: str, **info):
    """Time ``fn`` under ``group``: warmed up, synchronised before the clock stops, and called
    back to back within each round for at least ROUND_SECONDS, so that sub-millisecond ops are
    timed in their steady state (as in a training loop) rather than with the timer's and the
    harness's overhead between single calls."""
    benchmark.group = group
    benchmark.extra_info.update(backend=backend, device=device, torch=torch.__version__, **info)
    if device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()

    def timed():
        fn()
        synchronize(device)

    for _ in range(3):
        timed()
    iterations = _iterations(timed, ROUND_SECONDS[device])
    benchmark.extra_info["iterations_per_round"] = iterations
    benchmark.pedantic(timed, rounds=20 if device == "cpu" else 100, iterations=iterations,
                       warmup_rounds=2)


ROUND_SECONDS = {"cpu": 5e-3, "cuda": 2e-3}


def _iterations(timed, seconds: float) -> int:
    """How many back-to-back calls of ``timed`` fill ``seconds`` (1 to 1000)."""
    start = time.perf_counter()
    for _ in range(3):
        timed()
    per_call = (time.perf_counter() - start) / 3
    return max(1, min(1000, round(seconds / max(per_call, 1e-9))))
