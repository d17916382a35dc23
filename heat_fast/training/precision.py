"""Where bf16 autocast and channels_last pay, decided per device.

bf16 pays where the hardware computes it natively: a CUDA GPU with bf16 (compute capability
8.0 and later: tensor cores) and a CPU with AVX-512 BF16 or AMX. Everywhere else it is
emulated and slower than float32 (12x slower for the small CNN's AT step on an AVX2 CPU,
benchmarks/RESULTS.md), and stays off.

channels_last pays wherever the convolutions run in an NHWC layout: on a bf16 GPU (its
tensor-core convolutions) and on an x86 CPU with AVX2 or AVX-512 under oneDNN, whose float32
and bf16 convolutions read NHWC directly but reorder NCHW activations to a blocked layout at
every call (float32 PGD-10 AT steps, channels_last against NCHW: 1.06-1.34x on an AVX-512
CPU, 1.10-1.23x on an AVX2 one; benchmarks/RESULTS.md). Elsewhere (other CPUs, torch without
oneDNN, GPUs without bf16) it is unmeasured and stays off.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import FrozenSet, Iterable, Optional, Union

import torch

CPUINFO = "/proc/cpuinfo"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPU_NHWC_FLAG = "avx2"  # oneDNN's x86 convolutions with an NHWC kernel (AVX-512 CPUs have it too)


@dataclass(frozen=True)
class FastPath:
    """The fastest correct settings for a device and why: ``bf16`` autocast, ``channels_last``."""

    bf16: bool
    channels_last: bool
    reason: str


def _cpuinfo_flags() -> FrozenSet[str]:
    """The CPU feature flags listed in /proc/cpuinfo (empty where the file does not exist)."""
    try:
        with open(CPUINFO) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def _cpu_flags(wanted: Iterable[str]) -> FrozenSet[str]:
    """Which of ``wanted`` this CPU has, from torch's CPU capabilities and /proc/cpuinfo
    (either one is enough)."""
    found = set(_cpuinfo_flags()) & set(wanted)
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        capabilities = get_capabilities()
        found |= {flag for flag in wanted if capabilities.get(flag)}
    return frozenset(found)


def cpu_bf16_flags() -> FrozenSet[str]:
    """Which of :data:`CPU_BF16_FLAGS` this CPU has."""
    return _cpu_flags(CPU_BF16_FLAGS)


def cpu_nhwc_convolutions() -> bool:
    """Whether torch's CPU convolutions run through oneDNN on an x86 CPU with AVX2 or better,
    whose kernels read channels_last activations directly."""
    return torch.backends.mkldnn.is_available() and bool(_cpu_flags((CPU_NHWC_FLAG,)))


def _cpu_fast_path() -> FastPath:
    bf16 = cpu_bf16_flags()
    if bf16:
        return FastPath(True, True, f"the CPU has {' and '.join(sorted(bf16))}")
    no_bf16 = "the CPU has neither avx512_bf16 nor amx_bf16"
    if cpu_nhwc_convolutions():
        return FastPath(False, True, f"{no_bf16}; oneDNN runs its {CPU_NHWC_FLAG} "
                                     "convolutions faster in channels_last")
    return FastPath(False, False, f"{no_bf16}, and no oneDNN {CPU_NHWC_FLAG} convolutions")


def fast_path(device: Union[str, torch.device]) -> FastPath:
    """bf16 autocast and channels_last on ``device``, each where it is measured to pay (see
    the module docstring), with the reason."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return FastPath(True, True, f"{torch.cuda.get_device_name(device)} computes bf16")
        return FastPath(False, False, "this GPU has no native bf16")
    if device.type == "cpu":
        return _cpu_fast_path()
    return FastPath(False, False, f"no fast path known for {device.type}")


def resolve(device: Union[str, torch.device], bf16: Optional[bool],
            channels_last: Optional[bool]) -> FastPath:
    """``bf16`` / ``channels_last`` as given, each None filled from :func:`fast_path`
    (whose reason the result keeps)."""
    auto = fast_path(device)
    return FastPath(auto.bf16 if bf16 is None else bool(bf16),
                    auto.channels_last if channels_last is None else bool(channels_last),
                    auto.reason)


def _settings(bf16: bool, channels_last: bool) -> str:
    return f"{'bf16 autocast' if bf16 else 'float32'}, {'channels_last' if channels_last else 'NCHW'}"


def describe(device: Union[str, torch.device], bf16: bool, channels_last: bool) -> str:
    """One line for the start of a run: the settings and whether they are this device's
    default, e.g. ``bf16 autocast, channels_last (default here: the CPU has avx512_bf16)``."""
    auto = fast_path(device)
    chosen = _settings(bf16, channels_last)
    if (bf16, channels_last) == (auto.bf16, auto.channels_last):
        return f"{chosen} (default here: {auto.reason})"
    return f"{chosen} (as asked; default here: {_settings(auto.bf16, auto.channels_last)}, as {auto.reason})"
