"""The large-class HE loss on the CPU (issue 16's targets): fwd+bwd of the chunked native path
against the reference, torch.nn.functional.linear_cross_entropy (m = 0) and the floor of the
three GEMMs it cannot avoid (x·Wᵀ, G·W, Gᵀ·x in the input dtype), all timed in the same test.

B ∈ {256, 1024}, D 512, C ∈ {32768, 131072}, float32 and bfloat16. Each implementation runs
ROUNDS times, the implementations in turn (so a noisy neighbour slows them alike), and its
median goes into the benchmark's extra_info with the ratios; the benchmark itself records the
chunked path. Peak memory: benchmarks/he_loss_large_c_memory.py (a fresh process per case).

    python -m pytest benchmarks/test_bench_he_loss_large_c.py --benchmark-json large.json
"""
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

import heat_fast as hf
from benchutil import skip_unless_runs

ROUNDS = 3
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def _steps(x, w, y):
    xd, wd = x.detach(), w.detach()
    g = torch.randn(x.shape[0], w.shape[0], dtype=x.dtype)

    def run(loss_fn):
        return lambda: torch.autograd.grad(loss_fn(), (x, w))

    steps = {
        "native chunked": run(lambda: hf.he_cross_entropy(x, w, y, 15.0, 0.2, backend="native",
                                                          chunked=True)),
        "reference": run(lambda: hf.he_cross_entropy(x, w, y, 15.0, 0.2, backend="reference")),
        "three GEMMs (floor)": lambda: (xd @ wd.t(), g @ wd, g.t() @ xd),
    }
    if hasattr(F, "linear_cross_entropy"):
        steps["linear_cross_entropy (m = 0)"] = run(lambda: F.linear_cross_entropy(x, w, y))
    else:
        steps["cross_entropy(x @ Wᵀ) (m = 0)"] = run(lambda: F.cross_entropy(x @ w.t(), y))
    return steps


def _interleaved_medians(steps):
    for step in steps.values():  # warm up
        step()
    times = {name: [] for name in steps}
    for _ in range(ROUNDS):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


@pytest.mark.parametrize("classes", [32768, 131072])
@pytest.mark.parametrize("batch", [256, 1024])
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_he_loss_large_classes(benchmark, dtype_name, batch, classes):
    dtype = DTYPES[dtype_name]
    skip_unless_runs("native", "cpu", dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 512, generator=gen).to(dtype).requires_grad_(True)
    w = torch.randn(classes, 512, generator=gen).to(dtype).requires_grad_(True)
    y = torch.randint(0, classes, (batch,), generator=gen)
    steps = _steps(x, w, y)
    ms = _interleaved_medians(steps)
    chunked = ms["native chunked"]
    baseline = next(name for name in ms if "m = 0" in name)
    benchmark.group = f"he_cross_entropy large C fwd+bwd B{batch} D512 C{classes} {dtype_name}"
    benchmark.extra_info.update(
        backend="native", device="cpu", torch=torch.__version__, threads=torch.get_num_threads(),
        shape=[batch, 512, classes], ms=ms,
        vs_floor=chunked / ms["three GEMMs (floor)"], reference_vs_chunked=ms["reference"] / chunked,
        baseline=baseline, baseline_vs_chunked=ms[baseline] / chunked)
    print(f"\n| B{batch} C{classes} {dtype_name} | " + " | ".join(
        f"{name} {value:.0f} ms" for name, value in ms.items())
          + f" | chunked / floor {chunked / ms['three GEMMs (floor)']:.2f} |")
    benchmark.pedantic(steps["native chunked"], rounds=1, iterations=1)
