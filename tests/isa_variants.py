"""The native CPU kernels' instruction-set variants against each other.

HEAT_FAST_CPU_ISA is read once per process, so each variant runs a script in a fresh one.
"""
import os
import subprocess
import sys

import torch

_SAVE = """
from heat_fast import native as _native
torch.save({"isa": _native.cpu_isa(), "out": out}, %r)
"""


def assert_isa_variants_agree(script: str, tmp_path) -> None:
    """Run ``script`` (which imports torch and fills ``out``, a list of tuples of tensors)
    under HEAT_FAST_CPU_ISA=baseline and under this CPU's widest kernels: every tensor must
    be equal bit for bit."""
    runs = {}
    for isa in ("baseline", None):
        path = tmp_path / f"{isa}.pt"
        env = dict(os.environ)
        env.pop("HEAT_FAST_CPU_ISA", None)
        if isa:
            env["HEAT_FAST_CPU_ISA"] = isa
        subprocess.run([sys.executable, "-c", script + _SAVE % str(path)], env=env, check=True,
                       timeout=300)
        runs[isa] = torch.load(path)
    assert runs["baseline"]["isa"] == "baseline"
    assert len(runs["baseline"]["out"]) == len(runs[None]["out"]) > 0
    for baseline, widest in zip(runs["baseline"]["out"], runs[None]["out"]):
        for a, b in zip(baseline, widest):
            assert torch.equal(a, b)
