"""The SPEC §7 GPU figures in one run: every case timed in this process, ratios in the same run.

    python gpu/bench.py --out DIR [--budget SECONDS]      # on a CUDA GPU
    python gpu/bench.py --out DIR --dry-run               # tiny CPU shapes, checks this script

Cases (each implementation of a case runs on the same inputs):
- he_cross_entropy forward + backward at the CIFAR head (B128 D640 C10) and the ImageNet head
  (B256 D2048 C1000), float32 and bfloat16: eager reference, torch.compile(reference), Triton,
  native (targets: >= 3x eager, >= 1.5x compiled);
- he_cross_entropy at C = 131072 (B256 D512, bfloat16; the chunked path) against the time of
  its three GEMMs (target: within 2x, no B×C buffer), the unchunked path and
  torch.nn.functional.linear_cross_entropy (m = 0), with peak memory beyond the inputs;
- pgd_step L-inf at 128x3x32x32 and 256x3x224x224 against a device copy of the same bytes
  (target: >= 80% of the copy's bandwidth, counting 3 reads + 1 write);
- one PGD-10 AT step with HE of PreActResNet-18 and WRN-34-10 at batch 128: heat_fast's
  default step (bf16 autocast, channels_last, the fused ops) against the plain-torch
  AT_HE-style loop and heat_fast's eager reference path, both float32 (benchmarks/at_step.py;
  target >= 2.5x).

GPU timing: CUDA events around blocks of back-to-back calls (no synchronisation per call), the
median over blocks. torch.compile's dynamo state is reset before each compiled case, so no case
falls back to eager through the recompile limit. Writes DIR/bench.json and DIR/bench.md; a case
that fails is recorded with its error and the run goes on; cases past --budget are skipped.
Both files are rewritten after every case, so a run killed by its time limit keeps what it
measured.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]  # heat_fast; at_step, the AT step

import heat_fast as hf  # noqa: E402


class Clock:
    """Median milliseconds per call of ``fn`` over blocks of back-to-back calls."""

    def __init__(self, device: torch.device, block_ms: float, blocks: int) -> None:
        self.device, self.block_ms, self.blocks = device, block_ms, blocks

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _block(self, fn: Callable[[], object], calls: int) -> float:
        if self.device.type == "cuda":
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / calls
        begin = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - begin) * 1e3 / calls

    def __call__(self, fn: Callable[[], object]) -> float:
        for _ in range(3):
            fn()
        self._sync()
        once = self._block(fn, 1)
        calls = max(1, min(1000, round(self.block_ms / max(once, 1e-4))))
        return statistics.median(self._block(fn, calls) for _ in range(self.blocks))


def he_loss_fn(x, w, y, backend: str, compiled: bool) -> Callable[[], object]:
    def loss(features, weight, target):
        return hf.he_cross_entropy(features, weight, target, 15.0, 0.2, backend=backend)

    if compiled:
        torch._dynamo.reset()
        loss = torch.compile(loss)
    return lambda: torch.autograd.grad(loss(x, w, y), (x, w))


def he_inputs(batch: int, dim: int, classes: int, dtype, device):
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, dim, device=device, generator=gen).to(dtype).requires_grad_(True)
    w = torch.randn(classes, dim, device=device, generator=gen).to(dtype).requires_grad_(True)
    y = torch.randint(0, classes, (batch,), device=device, generator=gen)
    return x, w, y


def bench_he_loss(clock: Clock, device, shapes, dtypes, backends) -> List[Dict]:
    rows = []
    for name, (batch, dim, classes) in shapes.items():
        for dtype in dtypes:
            x, w, y = he_inputs(batch, dim, classes, dtype, device)
            times = {}
            for impl in ("reference", "compiled-reference") + backends:
                backend = "reference" if impl.endswith("reference") else impl
                times[impl] = clock(he_loss_fn(x, w, y, backend, impl == "compiled-reference"))
            for impl, ms in times.items():
                rows.append(dict(case=f"he_cross_entropy fwd+bwd {name}", impl=impl,
                                 dtype=str(dtype).replace("torch.", ""),
                                 shape=f"B{batch} D{dim} C{classes}", ms=ms,
                                 vs_eager=times["reference"] / ms,
                                 vs_compiled=times["compiled-reference"] / ms))
    return rows


def large_class_step(x, w, y, impl: str) -> Callable[[], object]:
    """fwd+bwd of one large-class implementation: "<backend> chunked" or "<backend> unchunked"
    (he_cross_entropy's two paths; at C >= 32768 it picks the chunked one by itself),
    "reference", or the plain m = 0 baseline torch.nn.functional.linear_cross_entropy."""
    if impl == "linear_cross_entropy (m = 0)":
        import torch.nn.functional as F

        return lambda: torch.autograd.grad(F.linear_cross_entropy(x, w, y), (x, w))
    backend, _, variant = impl.partition(" ")
    chunked = {"chunked": True, "unchunked": False}.get(variant)
    return lambda: torch.autograd.grad(
        hf.he_cross_entropy(x, w, y, 15.0, 0.2, backend=backend, chunked=chunked), (x, w))


def bench_large_classes(clock: Clock, device, shape, backends) -> List[Dict]:
    """The large-class loss (chunked on every fast backend) against the time of its three
    bf16 GEMMs, the unchunked path and linear_cross_entropy, with each one's peak memory beyond
    the inputs and their gradients (CUDA)."""
    batch, dim, classes = shape
    x, w, y = he_inputs(batch, dim, classes, torch.bfloat16, device)
    g = torch.randn(batch, classes, device=device, dtype=torch.bfloat16)
    xd, wd = x.detach(), w.detach()
    floor = clock(lambda: (xd @ wd.t(), g @ wd, g.t() @ xd))
    del g
    label = f"B{batch} D{dim} C{classes}"
    rows = [dict(case="he_cross_entropy large C", impl="three bf16 GEMMs (floor)",
                 dtype="bfloat16", shape=label, ms=floor, vs_floor=1.0)]
    impls = ["reference"] + [f"{name} {path}" for name in backends
                             for path in ("chunked", "unchunked")]
    if hasattr(torch.nn.functional, "linear_cross_entropy"):
        impls.append("linear_cross_entropy (m = 0)")
    grads = 2 * (x.numel() + w.numel())
    for impl in impls:
        step = large_class_step(x, w, y, impl)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base - grads
        ms = clock(step)
        row = dict(case="he_cross_entropy large C", impl=impl, dtype="bfloat16", shape=label,
                   ms=ms, vs_floor=floor / ms)
        if device.type == "cuda":
            row["peak_mib_beyond_inputs"] = peak / 2**20
            row["of_bc_float32_buffer"] = peak / (batch * classes * 4)
        rows.append(row)
    return rows


def bench_pgd(clock: Clock, device, shapes, dtypes, backends) -> List[Dict]:
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            gen = torch.Generator(device).manual_seed(0)
            x_nat = torch.rand(shape, device=device, generator=gen).to(dtype)
            grad = torch.randn(shape, device=device, generator=gen).to(dtype)
            x_adv = x_nat.clone()
            copy_dst = torch.empty_like(x_nat)
            nbytes = x_nat.numel() * x_nat.element_size()
            copy_ms = clock(lambda: copy_dst.copy_(x_nat))
            copy_gbs = 2 * nbytes / copy_ms / 1e6
            label = "x".join(map(str, shape))
            rows.append(dict(case=f"pgd_step linf {label}", impl="device copy (anchor)",
                             dtype=str(dtype).replace("torch.", ""), shape=label, ms=copy_ms,
                             gb_per_s=copy_gbs, of_copy_bandwidth=1.0))
            for impl in ("reference",) + backends:
                ms = clock(lambda: hf.pgd_step(x_adv, grad, x_nat, 8 / 255, 2 / 255, "linf",
                                               out=x_adv, backend=impl))
                gbs = 4 * nbytes / ms / 1e6
                rows.append(dict(case=f"pgd_step linf {label}", impl=impl,
                                 dtype=str(dtype).replace("torch.", ""), shape=label, ms=ms,
                                 gb_per_s=gbs, of_copy_bandwidth=gbs / copy_gbs))
    return rows


def at_step(model_name: str, batch: int, device, variant: str, image: int,
            channels: int) -> Tuple[Callable[[], object], str]:
    """One PGD-10 AT step with HE (craft + update) of benchmarks/at_step.py's ``variant``, and
    its settings in words."""
    from at_step import step_fn

    from heat_fast.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, 10, he=True, in_channels=channels,
                        image_size=image).to(device)
    gen = torch.Generator(device).manual_seed(1)
    x = torch.rand(batch, channels, image, image, device=device, generator=gen)
    y = torch.randint(0, 10, (batch,), device=device, generator=gen)
    return step_fn(variant, model, x, y)


AT_STEP_VARIANTS = {"plain-at-he": "plain-torch AT_HE-style loop",
                    "reference": "heat_fast fp32 eager reference path",
                    "default": "heat_fast default"}


def bench_at_step(clock: Clock, device, models, batch, image, channels) -> List[Dict]:
    """heat_fast's default step (the device's settings: bf16 autocast and channels_last on a
    bf16 GPU) against the plain-torch AT_HE-style loop (issue 17) and heat_fast's float32
    eager reference path (SPEC §7), both float32 NCHW."""
    rows = []
    for model_name in models:
        times, settings = {}, {}
        for variant in AT_STEP_VARIANTS:  # the plain loop first, timed before any Trainer
            step, settings[variant] = at_step(model_name, batch, device, variant, image,
                                              channels)
            times[variant] = clock(step)
        for variant, impl in AT_STEP_VARIANTS.items():
            rows.append(dict(case=f"PGD-10 AT step +HE {model_name}", impl=impl,
                             dtype=settings[variant], shape=f"B{batch} {channels}x{image}x{image}",
                             ms=times[variant], images_per_s=batch / times[variant] * 1e3,
                             vs_plain=times["plain-at-he"] / times[variant],
                             vs_eager=times["reference"] / times[variant]))
    return rows


def environment(device) -> Dict[str, Optional[str]]:
    import triton

    from heat_fast import native

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "triton": triton.__version__,
            "native": str(native.BUILD_INFO),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or "cpu"}


def markdown(env: Dict, rows: List[Dict], problems: List[str]) -> str:
    lines = [f"Device: {env['device']}; torch {env['torch']} (CUDA {env['cuda']}), "
             f"triton {env['triton']}, Python {env['python']}.", "",
             "| case | implementation | dtype | shape | ms | ratio |", "|---|---|---|---|---:|---|"]
    for r in rows:
        ratio = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in r.items()
                          if k in ("vs_eager", "vs_compiled", "vs_plain", "vs_floor",
                                   "of_copy_bandwidth", "of_bc_float32_buffer"))
        extra = "".join(f", {k.replace('_', ' ')} {v:.0f}" for k, v in r.items()
                        if k in ("gb_per_s", "images_per_s", "peak_mib_beyond_inputs"))
        lines.append(f"| {r['case']} | {r['impl']} | {r['dtype']} | {r['shape']} "
                     f"| {r['ms']:.4f} | {ratio}{extra} |")
    lines += [""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def write_results(out: str, env: Dict, rows: List[Dict], problems: List[str]) -> None:
    """DIR/bench.json and DIR/bench.md with the figures so far."""
    with open(os.path.join(out, "bench.json"), "w", encoding="utf-8") as f:
        json.dump({"environment": env, "rows": rows, "problems": problems}, f, indent=1)
    with open(os.path.join(out, "bench.md"), "w", encoding="utf-8") as f:
        f.write(markdown(env, rows, problems))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for bench.json and bench.md")
    parser.add_argument("--budget", type=float, default=170.0, help="seconds for all cases")
    parser.add_argument("--dry-run", action="store_true", help="tiny CPU shapes")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        sys.exit("gpu/bench.py needs a CUDA GPU (or --dry-run)")
    device = torch.device("cpu" if dry else "cuda")
    clock = Clock(device, block_ms=2.0 if dry else 20.0, blocks=2 if dry else 7)
    backends = ("native",) if dry else ("triton", "native")
    f32, bf16 = torch.float32, torch.bfloat16
    heads = ({"tiny": (8, 16, 5)} if dry else
             {"CIFAR head": (128, 640, 10), "ImageNet head": (256, 2048, 1000)})
    cases = [
        ("he loss", lambda: bench_he_loss(clock, device, heads, (f32, bf16), backends)),
        ("he loss large C", lambda: bench_large_classes(
            clock, device, (4, 8, 300) if dry else (256, 512, 131072), backends)),
        ("pgd_step", lambda: bench_pgd(clock, device, [(2, 3, 4, 4)] if dry else
                                       [(128, 3, 32, 32), (256, 3, 224, 224)], (f32, bf16),
                                       backends)),
        ("AT step", lambda: bench_at_step(clock, device, ["small-cnn"] if dry else
                                          ["preact-resnet18", "wrn-34-10"], 4 if dry else 128,
                                          8 if dry else 32, 1 if dry else 3)),
    ]
    env = environment(device)
    rows: List[Dict] = []
    problems: List[str] = []
    start = time.monotonic()
    for name, run in cases:
        if time.monotonic() - start > args.budget:
            problems.append(f"{name}: skipped, out of the {args.budget:.0f} s budget")
            continue
        case_start = time.monotonic()
        try:
            rows += run()
        except Exception as error:  # one failing case must not lose the others' figures
            problems.append(f"{name}: {type(error).__name__}: {error}")
            traceback.print_exc()
        print(f"{name}: {time.monotonic() - case_start:.1f} s", flush=True)
        write_results(args.out, env, rows, problems)  # a run killed later keeps these figures
    print(markdown(env, rows, problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
