"""How many CPU threads torch uses: chosen to avoid oversubscription, applied, restored.

torch's default (one thread per core) is fastest on an idle machine, but when other jobs
keep some cores busy its threads wait on each other at every parallel region and a run gets
many times slower. :func:`choose_threads` takes, in order: ``--threads N``,
``OMP_NUM_THREADS``, or (auto) the usable CPUs (affinity, cgroup quota, shared among
the job's processes on this machine) minus those other processes keep busy, sampled from
``/proc/stat`` for a fraction of a second (the 1-minute load average where that is not
readable). The count is decided once, at the start of a command, and the run records it:
results can differ in the last bits between thread counts (parallel reductions add in
another order), so pass ``--threads`` to reproduce a run exactly.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

ENV_VAR = "OMP_NUM_THREADS"
SAMPLE_SECONDS = 0.15
# a CPU that other processes keep busy less than this fraction of the time still counts as free
BUSY_TOLERANCE = 0.3
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count, where it came from, and a warning when it may run slowly."""

    count: int
    source: str
    warning: Optional[str] = None

    def describe(self) -> str:
        return f"threads {self.count} ({self.source})"


def cgroup_cpu_limit(v2: Path = CGROUP_V2, v1: Path = CGROUP_V1) -> Optional[float]:
    """The cgroup CPU quota in CPUs (e.g. 2.0), or None when unlimited or unknown."""
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((v1 / "cpu.cfs_quota_us").read_text())
        period = int((v1 / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def affinity_cpus() -> Sequence[int]:
    """The CPU ids this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def usable_cpus() -> int:
    """CPUs this process may use: its affinity set, capped by the cgroup quota."""
    count = len(affinity_cpus())
    limit = cgroup_cpu_limit()
    return max(1, min(count, math.ceil(limit - 1e-9))) if limit else max(1, count)


def _cpu_times(cpus: Sequence[int], stat: Path) -> Optional[tuple]:
    """(busy, total) jiffies summed over ``cpus`` from /proc/stat, None if unreadable."""
    wanted = {f"cpu{i}" for i in cpus}
    busy = total = 0
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            total += sum(values)
            busy += sum(values) - values[3] - values[4]
    return (busy, total) if total else None


def busy_cpus(cpus: Sequence[int], seconds: float = SAMPLE_SECONDS,
              stat: Path = Path("/proc/stat")) -> float:
    """How many of ``cpus`` other processes keep busy, sampled over ``seconds`` (this process
    sleeps meanwhile); the 1-minute load average where /proc/stat is not readable."""
    before = _cpu_times(cpus, stat)
    if before is None:
        return float(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0.0
    time.sleep(seconds)
    after = _cpu_times(cpus, stat)
    if after is None or after[1] <= before[1]:
        return 0.0
    return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])


def _local_processes() -> int:
    """Processes of this job on this machine: torchrun's LOCAL_WORLD_SIZE, else WORLD_SIZE."""
    for name in ("LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return 1


def choose_threads(requested: Optional[int] = None,
                   busy: Optional[Callable[[Sequence[int]], float]] = None) -> ThreadChoice:
    """The thread count for this process (see the module docstring). ``requested`` is
    ``--threads``; ``busy`` measures how many of the given CPUs others use (default
    :func:`busy_cpus`)."""
    busy = busy or busy_cpus
    usable = usable_cpus()
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return ThreadChoice(requested, "--threads", _oversubscribed(requested, usable, busy))
    env = os.environ.get(ENV_VAR, "").strip()
    if env.isdigit() and int(env) >= 1:
        return ThreadChoice(int(env), ENV_VAR)
    ignored = f"{ENV_VAR}={env!r} is not an integer >= 1, so it is ignored" if env else None
    share = max(1, usable // _local_processes())
    taken = busy(affinity_cpus())
    free = usable - math.ceil(max(0.0, taken - BUSY_TOLERANCE))
    count = max(1, min(share, free))
    source = f"auto: {usable} usable CPU{'s' if usable != 1 else ''}, {taken:.1f} busy with other processes"
    return ThreadChoice(count, source, ignored)


def _oversubscribed(count: int, usable: int,
                    busy: Callable[[Sequence[int]], float]) -> Optional[str]:
    if count > usable:
        return (f"--threads {count} exceeds the {usable} usable CPUs: expect a much slower run "
                f"(try --threads {usable})")
    free = usable - math.ceil(max(0.0, busy(affinity_cpus()) - BUSY_TOLERANCE))
    if count > max(free, 1):
        return (f"other processes keep {usable - free} of {usable} CPUs busy: --threads {count} "
                f"may run many times slower than --threads {max(free, 1)}")
    return None


@contextlib.contextmanager
def using_threads(count: int) -> Iterator[None]:
    """torch uses ``count`` intra-op threads inside the block, the previous count after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
