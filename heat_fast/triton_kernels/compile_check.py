"""Ahead-of-time compile check of the Triton kernels for a GPU target, without a GPU.

The Triton interpreter accepts kernels the GPU compiler rejects (a plain module global read
inside a kernel, for one), so passing the interpreter tests says nothing about the GPU. This
check makes Triton compile, for an sm_XX target, exactly the kernel specializations the real
host wrappers launch (their dtypes, constexprs, tile plans and grids), without launching:

- a stand-in driver answers "CUDA, compute capability XX" and hands out no device;
- ``JITFunction.run`` is wrapped so every launch only compiles (``warmup=True``) and records
  the kernel with its grid;
- the tile planners see the SM count of an H100/H200 (132), as on the GPU.

Each compiled kernel is then inspected with the tools in Triton's wheel: ``ptxas -v`` on its
PTX gives registers and spill stores/loads, ``cuobjdump`` on its cubin the shared memory and
the tensor-core instructions (HMMA = mma.sync, HGMMA = Hopper wgmma, DMMA = float64) in its
SASS.

    python -m heat_fast.triton_kernels.compile_check [--arch 90] [--json FILE] [--markdown FILE]

exits 1 on any compile error, spill, HE matmul of 16-bit inputs without tensor-core
instructions, HE row kernel without its device-side label assert, or an ImageNet-head launch
of fewer programs than SMs. TRITON_INTERPRET must be
unset (the interpreter replaces the kernels at import).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

SM_COUNT = 132
MMA = re.compile(r"\b(HGMMA|HMMA|DMMA|IMMA)\b")
SHARED = re.compile(r"SHARED:(\d+)")
PTXAS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
                   r"(?s:.*?)Used (\d+) registers")
MATMUL_KERNELS = ("_cos_partials_kernel", "_grad_products_kernel", "_chunk_stats_kernel",
                  "_chunk_grad_cos_kernel")
# PTX a kernel must contain: the device-side label-range assert of the HE loss.
REQUIRED_PTX = {"_ce_rows_kernel": "__assertfail", "_chunk_loss_kernel": "__assertfail"}


@dataclass
class CompiledLaunch:
    """One compiled kernel specialization and what it would launch."""

    case: str
    kernel: str
    programs: int
    num_warps: int = 0
    registers: int = 0
    stack_frame: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    shared: int = 0
    tensor_core: List[str] = field(default_factory=list)

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


@dataclass
class Case:
    """A named call of the host wrappers: ``tensor_cores`` asks its HE matmul kernels for
    tensor-core instructions, ``min_programs`` a lower bound on every launch's grid."""

    name: str
    run: Callable[[], object]
    tensor_cores: bool = False
    min_programs: int = 0


@dataclass
class Report:
    launches: List[CompiledLaunch] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.failures


class _StandInDriver:
    """A Triton driver that targets a GPU it does not have: compile only, never launch."""

    def __init__(self, target) -> None:
        self.target = target

    @staticmethod
    def is_active() -> bool:
        return True

    def get_current_target(self):
        return self.target

    @staticmethod
    def get_current_device() -> int:
        return 0

    @staticmethod
    def get_current_stream(device: Optional[int] = None) -> int:
        return 0

    @staticmethod
    def get_active_torch_device() -> torch.device:
        return torch.device("cpu")


def _programs(grid) -> int:
    total = 1
    for size in grid:
        total *= int(size)
    return total


@contextlib.contextmanager
def compiling_for(arch: int, sm_count: int = SM_COUNT) -> Iterator[List[Tuple[str, int, object]]]:
    """Within the block, Triton launches compile for sm_``arch`` and are recorded as
    (kernel name, programs, compiled kernel) instead of running."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("the compile check needs TRITON_INTERPRET unset before triton loads")
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from heat_fast.triton_kernels import common

    recorded: List[Tuple[str, int, object]] = []
    launch = JITFunction.run
    plan_for = common.target_programs

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = launch(self, *args, grid=grid, warmup=True, **kwargs)
        size = grid(kwargs) if callable(grid) else grid
        recorded.append((self.__name__, _programs(size), kernel))
        return kernel

    previous = getattr(driver, "_active", None)  # reading .active would probe for a GPU
    driver.set_active(_StandInDriver(GPUTarget("cuda", arch, 32)))
    JITFunction.run = compile_only
    common.target_programs = lambda device: sm_count
    try:
        yield recorded
    finally:
        JITFunction.run = launch
        common.target_programs = plan_for
        driver.set_active(previous)


def _ptxas(arch: int) -> str:
    """The ptxas Triton itself uses for sm_``arch`` (it ships more than one)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(arch).path


def _cuobjdump() -> str:
    from triton import knobs

    return knobs.nvidia.cuobjdump.path


def _run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return result.stdout + result.stderr


def inspect_kernel(kernel, arch: int) -> Dict[str, object]:
    """Registers, stack frame and spills (ptxas -v), shared memory and tensor-core mnemonics
    (cuobjdump) of a compiled Triton kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(ptx, "w", encoding="utf-8") as f:
            f.write(kernel.asm["ptx"])
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        suffix = "a" if arch >= 90 else ""
        ptxas = _run(_ptxas(arch), f"-arch=sm_{arch}{suffix}", "-v", ptx,
                     "-o", os.path.join(tmp, "check.cubin"))
        usage = _run(_cuobjdump(), "--dump-resource-usage", cubin)
        sass = _run(_cuobjdump(), "--dump-sass", cubin)
    stack, stores, loads, registers = (int(v) for v in PTXAS.search(ptxas).groups())
    shared = SHARED.search(usage)
    return {"registers": registers, "stack_frame": stack, "spill_stores": stores,
            "spill_loads": loads, "shared": int(shared.group(1)) if shared else 0,
            "tensor_core": sorted(set(MMA.findall(sass)))}


def _summary(error: Exception) -> str:
    """The error's type, the kernel line it points at and the innermost cause's message."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    where = next((line.strip() for line in lines if line.startswith("at ")), "")
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    message = [line for line in str(cause).splitlines() if line.strip() and line.strip() != "^"]
    last = message[-1].strip() if message else type(cause).__name__
    return " ".join(part for part in (type(error).__name__, where, last) if part)


def compile_cases(cases: Sequence[Case], arch: int = 90) -> Report:
    """Compile every case's launches for sm_``arch`` and check them (module docstring)."""
    report = Report()
    for case in cases:
        with compiling_for(arch) as recorded:
            try:
                case.run()
            except Exception as error:  # a compile error of any kind fails the check
                report.errors.append(f"{case.name}: {_summary(error)}")
                continue
        for name, programs, kernel in recorded:
            launch = CompiledLaunch(case.name, name, programs, kernel.metadata.num_warps,
                                    **inspect_kernel(kernel, arch))
            report.launches.append(launch)
            where = f"{case.name}: {name}"
            if launch.spills:
                report.failures.append(f"{where} spills ({launch.spill_stores} B stored, "
                                       f"{launch.spill_loads} B loaded per thread)")
            if case.tensor_cores and name in MATMUL_KERNELS and not launch.tensor_core:
                report.failures.append(f"{where} has no tensor-core instruction in its SASS")
            needed = REQUIRED_PTX.get(name)
            if needed and needed not in kernel.asm["ptx"]:
                report.failures.append(f"{where} lacks {needed} in its PTX")
            if programs < case.min_programs:
                report.failures.append(f"{where} launches {programs} programs, fewer than "
                                       f"{case.min_programs}")
    return report


def _he_case(name: str, batch: int, dim: int, classes: int, x_dtype: torch.dtype,
             w_dtype: Optional[torch.dtype] = None, feature_norm: bool = True,
             weight_norm: bool = True, min_programs: int = 0) -> Case:
    w_dtype = w_dtype or x_dtype

    def run() -> None:
        from heat_fast.triton_kernels import he_loss

        x = torch.empty(batch, dim, dtype=x_dtype)
        w = torch.empty(classes, dim, dtype=w_dtype)
        y = torch.zeros(batch, dtype=torch.int64)
        _, grad_cos, fn, wn = he_loss.he_ce_forward(x, w, y, 15.0, 0.2, 0.0, feature_norm,
                                                    weight_norm)
        he_loss.he_ce_backward(torch.empty_like(fn), x, w, grad_cos, fn, wn, feature_norm,
                               weight_norm)

    sixteen = x_dtype == w_dtype and x_dtype in (torch.float16, torch.bfloat16)
    return Case(name, run, tensor_cores=sixteen, min_programs=min_programs)


def _he_chunked_case(name: str, batch: int, dim: int, classes: int, dtype: torch.dtype,
                     min_programs: int = 0) -> Case:
    chunk = -(-classes // 2)  # two backward chunks: every launch, half the inspections

    def run() -> None:
        from heat_fast.triton_kernels import he_loss_chunked

        x = torch.empty(batch, dim, dtype=dtype)
        w = torch.empty(classes, dim, dtype=dtype)
        y = torch.zeros(batch, dtype=torch.int64)
        _, lse, target_grad, fn, wn = he_loss_chunked.he_ce_chunked_forward(
            x, w, y, 15.0, 0.2, 0.0, True, True, chunk)
        he_loss_chunked.he_ce_chunked_backward(torch.empty_like(fn), x, w, y, lse, target_grad,
                                               fn, wn, 15.0, 0.0, True, True, chunk)

    sixteen = dtype in (torch.float16, torch.bfloat16)
    return Case(name, run, tensor_cores=sixteen, min_programs=min_programs)


def _pgd_case(name: str, shape: Tuple[int, ...], dtype: torch.dtype, norm: str,
              per_channel: bool = False, delta: bool = False) -> Case:
    """pgd_step (position or delta form) and random_init as heat_fast.ops.pgd calls them:
    per-sample eps and alpha with a scalar box, or per-channel budgets and box."""
    def run() -> None:
        from heat_fast.triton_kernels import pgd

        x = torch.empty(shape, dtype=dtype)
        per_sample = torch.empty((shape[0],) + (1,) * (len(shape) - 1), dtype=torch.float32)
        channel = torch.empty((shape[1],) + (1,) * (len(shape) - 2), dtype=torch.float32)
        lo, hi = (channel, channel) if per_channel else (torch.tensor(0.0), torch.tensor(1.0))
        eps = channel if per_channel and norm == "linf" else per_sample
        pgd.pgd_step_(x, x, torch.empty_like(x), torch.empty_like(x), eps, eps, lo, hi, norm,
                      delta)
        pgd.random_init_(x, torch.empty_like(x), eps, lo, hi, torch.zeros((), dtype=torch.int64),
                         norm)

    return Case(name, run)


def default_cases() -> List[Case]:
    """Every specialization the host wrappers launch for the shapes and dtypes that matter."""
    f32, f16, bf16, f64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
    cases = []
    for dtype in (f32, f16, bf16):
        tag = str(dtype).replace("torch.", "")
        cases += [
            _he_case(f"he cifar-head {tag}", 128, 640, 10, dtype),
            _he_case(f"he imagenet-head {tag}", 256, 2048, 1000, dtype, min_programs=SM_COUNT),
            _he_case(f"he odd 7x33x5 {tag}", 7, 33, 5, dtype),
            _pgd_case(f"pgd linf 128x3x32x32 {tag}", (128, 3, 32, 32), dtype, "linf"),
            _pgd_case(f"pgd l2 single 128x3x32x32 {tag}", (128, 3, 32, 32), dtype, "l2"),
            _pgd_case(f"pgd l2 split 4x3x224x224 {tag}", (4, 3, 224, 224), dtype, "l2"),
        ]
    cases += [
        _he_case("he autocast bf16 features, f32 weight", 128, 640, 10, bf16, f32),
        _he_case("he autocast f16 features, f32 weight", 64, 512, 100, f16, f32),
        _he_case("he float64", 7, 33, 5, f64),
        _he_case("he no FN", 128, 640, 10, bf16, feature_norm=False),
        _he_case("he no WN", 128, 640, 10, f32, weight_norm=False),
        _he_case("he no FN no WN", 9, 20, 12, f16, feature_norm=False, weight_norm=False),
        _he_chunked_case("he chunked C131072 B256 D512 bfloat16", 256, 512, 131072, bf16,
                         min_programs=SM_COUNT),
        _he_chunked_case("he chunked C131072 B256 D512 float32", 256, 512, 131072, f32,
                         min_programs=SM_COUNT),
        _he_chunked_case("he chunked odd 7x33x1001 float16", 7, 33, 1001, f16),
        _pgd_case("pgd linf float64", (3, 5), f64, "linf"),
        _pgd_case("pgd l2 float64", (3, 5), f64, "l2"),
        _pgd_case("pgd linf per-channel delta 128x3x32x32", (128, 3, 32, 32), f32, "linf",
                  per_channel=True, delta=True),
        _pgd_case("pgd l2 per-channel box delta 4x3x224x224 bf16", (4, 3, 224, 224), bf16, "l2",
                  per_channel=True, delta=True),
    ]
    return cases


def format_table(report: Report) -> str:
    """A Markdown table of every compiled launch."""
    lines = ["| case | kernel | programs | warps | registers | spill stores/loads B | "
             "shared B | tensor-core SASS |",
             "|---|---|---:|---:|---:|---|---:|---|"]
    for l in report.launches:
        lines.append(f"| {l.case} | {l.kernel} | {l.programs} | {l.num_warps} | {l.registers} "
                     f"| {l.spill_stores}/{l.spill_loads} | {l.shared} "
                     f"| {', '.join(l.tensor_core) or '-'} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heat_fast.triton_kernels.compile_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability (default 90)")
    parser.add_argument("--json", help="write the report as JSON here")
    parser.add_argument("--markdown", help="write the table as Markdown here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton ≥ 3.9 warns when unset
    import triton

    report = compile_cases(default_cases(), args.arch)
    table = format_table(report)
    print(f"triton {triton.__version__}, torch {torch.__version__}, target sm_{args.arch}, "
          f"{len(report.launches)} kernel specializations compiled")
    print(table)
    for line in report.errors + report.failures:
        print(f"FAIL {line}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"triton": triton.__version__, "arch": args.arch,
                       "launches": [asdict(l) for l in report.launches],
                       "errors": report.errors, "failures": report.failures}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    print("compile check passed" if report.ok else "compile check FAILED")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
