"""End-to-end PGD-10 adversarial-training step with HE (craft + update), images per second:
the variants of benchmarks/at_step.py, the baseline ``backend`` "reference" in the JSON (so
benchmarks/report.py gives every ratio against it).

Beside the wall time each case records the 1-minute load average before and after it, the
process CPU time and the minor page faults per step. Cases run baseline first: the
Trainer's malloc tuning (heat_fast.training.allocator) is process-wide and must not reach
the baseline. Run on CPU with OMP_NUM_THREADS unset (torch then uses every core) or set to
the number of cores, on a quiet machine; compare ratios of one run only.

On a shared machine whose load changes between cases, the last test times the baseline, the
default and the compiled step alternately (``interleaved``: one round = one step of each, so
all see the same load) and records in ``extra_info`` the medians, the baseline/default ratio
of medians and each pair's median per-round ratio; it runs after the Trainer has tuned
malloc, which then helps the baseline too (a conservative ratio).
"""
import os
import resource
import statistics
import time

import pytest
import torch

from at_step import VARIANTS, step_fn
from benchutil import run_timed
from heat_fast.models import build_model

CASES = {
    "cpu": [("small-cnn", 128), ("preact-resnet18", 32)],
    "cuda": [("preact-resnet18", 128), ("wrn-34-10", 128)],
}
PARAMS = [(variant, device, model, batch) for variant in VARIANTS
          for device in CASES for model, batch in CASES[device]]


def _usage():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


@pytest.mark.parametrize("variant,device,model_name,batch", PARAMS)
def test_pgd10_at_step_he(benchmark, variant, device, model_name, batch):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    torch.manual_seed(0)
    model = build_model(model_name, 10, he=True).to(device)
    gen = torch.Generator(device).manual_seed(1)
    x = torch.rand(batch, 3, 32, 32, device=device, generator=gen)
    y = torch.randint(0, 10, (batch,), device=device, generator=gen)
    step, settings = step_fn(variant, model, x, y)
    for _ in range(2):  # compiles, fills caches and the allocator outside the counts
        step()
    calls = [0]

    def counted():
        step()
        calls[0] += 1

    load_before, (cpu_before, faults_before) = os.getloadavg()[0], _usage()
    run_timed(benchmark, counted, device, f"PGD-10 AT step + HE, {model_name} B{batch} {device}",
              "reference" if variant == "plain-at-he" else variant, images_per_step=batch)
    cpu_after, faults_after = _usage()
    benchmark.extra_info.update(
        variant=variant, settings=settings, threads=torch.get_num_threads(),
        omp_num_threads=os.environ.get("OMP_NUM_THREADS", "unset"),
        loadavg_before=load_before, loadavg_after=os.getloadavg()[0],
        cpu_seconds_per_step=(cpu_after - cpu_before) / calls[0],
        minor_faults_per_step=(faults_after - faults_before) / calls[0])


INTERLEAVED = ("plain-at-he", "default", "compile")


@pytest.mark.parametrize("device,model_name,batch", [("cpu", m, b) for m, b in CASES["cpu"]])
def test_pgd10_at_step_he_interleaved(benchmark, device, model_name, batch):
    steps, times = {}, {variant: [] for variant in INTERLEAVED}
    for variant in INTERLEAVED:
        torch.manual_seed(0)
        model = build_model(model_name, 10, he=True).to(device)
        gen = torch.Generator(device).manual_seed(1)
        x = torch.rand(batch, 3, 32, 32, device=device, generator=gen)
        y = torch.randint(0, 10, (batch,), device=device, generator=gen)
        steps[variant] = step_fn(variant, model, x, y)[0]
        for _ in range(2):
            steps[variant]()

    def each():
        for variant, step in steps.items():
            start = time.perf_counter()
            step()
            times[variant].append(time.perf_counter() - start)

    def per_round(slow, fast):
        """Median over rounds of slow/fast, each round's pair timed under the same load."""
        return statistics.median(a / b for a, b in zip(times[slow][1:], times[fast][1:]))

    load_before = os.getloadavg()[0]
    benchmark.group = f"PGD-10 AT step + HE, {model_name} B{batch} {device}, interleaved"
    benchmark.pedantic(each, rounds=10, iterations=1, warmup_rounds=1)
    medians = {variant: statistics.median(t[1:]) for variant, t in times.items()}
    benchmark.extra_info.update(
        backend="interleaved", device=device, torch=torch.__version__,
        images_per_step=len(INTERLEAVED) * batch, loadavg_before=load_before,
        loadavg_after=os.getloadavg()[0], median_seconds=medians,
        min_seconds={v: min(t[1:]) for v, t in times.items()},
        ratio_of_medians=medians["plain-at-he"] / medians["default"],
        ratio_of_minimums=min(times["plain-at-he"][1:]) / min(times["default"][1:]),
        per_round_ratios={"default vs plain-at-he": per_round("plain-at-he", "default"),
                          "compile vs plain-at-he": per_round("plain-at-he", "compile"),
                          "compile vs default": per_round("default", "compile")})
