"""Where bf16 autocast and channels_last pay, decided per device.

Both pay where the hardware computes bfloat16 natively: a CUDA GPU with bf16 (compute
capability 8.0 and later: tensor cores, and channels_last for their convolutions) and a CPU
with AVX-512 BF16 or AMX (oneDNN's bf16 convolutions run in the blocked NHWC layout, so
NCHW pays for layout reorders and a slow NCHW max-pool). Everywhere else bf16 is emulated
and slower than float32, and both stay off.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import FrozenSet, Optional, Union

import torch

CPUINFO = "/proc/cpuinfo"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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


def cpu_bf16_flags() -> FrozenSet[str]:
    """Which of :data:`CPU_BF16_FLAGS` this CPU has, from torch's CPU capabilities and
    /proc/cpuinfo (either one is enough)."""
    found = set(_cpuinfo_flags()) & set(CPU_BF16_FLAGS)
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        capabilities = get_capabilities()
        found |= {flag for flag in CPU_BF16_FLAGS if capabilities.get(flag)}
    return frozenset(found)


def fast_path(device: Union[str, torch.device]) -> FastPath:
    """bf16 autocast and channels_last on ``device`` where native bf16 hardware makes them
    faster than float32 (see the module docstring), else both off."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return FastPath(True, True, f"{torch.cuda.get_device_name(device)} computes bf16")
        return FastPath(False, False, "this GPU has no native bf16")
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        if flags:
            return FastPath(True, True, f"the CPU has {' and '.join(sorted(flags))}")
        return FastPath(False, False, "the CPU has neither avx512_bf16 nor amx_bf16")
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
