"""The sm_90 compile gate (heat_fast.triton_kernels.compile_check) and the tile plans.

The gate itself runs in CI as its own step over every real kernel specialization; these tests
show that it fails where it must: a kernel reading a plain module global (which the
interpreter accepts and the GPU compiler rejects) and a kernel that spills registers. They
compile in a subprocess because the interpreter (on in this test session) replaces kernels
at import.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

from heat_fast.triton_kernels import he_loss  # noqa: E402

KERNELS = '''
import triton
import triton.language as tl

EPS = 1e-12
CONSTEXPR_EPS = tl.constexpr(1e-12)


@triton.jit
def plain_global(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(x_ptr + offs, x + EPS, mask=offs < n)


@triton.jit
def constexpr_global(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(x_ptr + offs, x + CONSTEXPR_EPS, mask=offs < n)


@triton.jit
def spilling(a_ptr, c_ptr, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + r[:, None] * BLOCK + r[None, :])
    tl.store(c_ptr + r[:, None] * BLOCK + r[None, :], tl.dot(a, a, input_precision="ieee"))
'''

DRIVER = '''
import json, sys
import torch
import kernels
from heat_fast.triton_kernels.compile_check import Case, compile_cases

x = torch.empty(100)
tile = torch.empty(64, 64)
cases = {
    "plain_global": lambda: kernels.plain_global[(1,)](x, 100, BLOCK=128),
    "constexpr_global": lambda: kernels.constexpr_global[(1,)](x, 100, BLOCK=128),
    "spilling": lambda: kernels.spilling[(1,)](tile, tile, BLOCK=64),
}
out = {}
for name, run in cases.items():
    report = compile_cases([Case(name, run)])
    out[name] = {"ok": report.ok, "errors": report.errors, "failures": report.failures,
                 "registers": [l.registers for l in report.launches]}
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def gate_verdicts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gate")
    (folder / "kernels.py").write_text(KERNELS)
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1",
           "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(DRIVER)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_gate_rejects_a_plain_global_the_interpreter_accepts(gate_verdicts):
    verdict = gate_verdicts["plain_global"]
    assert not verdict["ok"]
    assert any("Cannot access global variable EPS" in e for e in verdict["errors"])


def test_gate_accepts_a_constexpr_global_and_reports_registers(gate_verdicts):
    verdict = gate_verdicts["constexpr_global"]
    assert verdict["ok"], verdict
    assert verdict["registers"] and verdict["registers"][0] > 0


def test_gate_rejects_a_kernel_that_spills(gate_verdicts):
    verdict = gate_verdicts["spilling"]
    assert not verdict["ok"]
    assert any("spills" in f for f in verdict["failures"])


@pytest.mark.parametrize("dtype,sixteen_bit", [(torch.float32, False), (torch.bfloat16, True),
                                               (torch.float64, False)])
@pytest.mark.parametrize("batch,dim,classes", [(128, 640, 10), (256, 2048, 1000)])
def test_tile_plans_fill_an_h100(dtype, sixteen_bit, batch, dim, classes):
    """CIFAR and ImageNet heads: at least one program per SM (132) forward and backward."""
    forward = he_loss.forward_plan(batch, classes, dim, dtype, sixteen_bit, 132)
    backward = he_loss.backward_plan(batch, classes, dim, dtype, sixteen_bit, 132)
    assert forward.programs >= 132 and backward.programs >= 132
    assert forward.splits * forward.k_per_split >= dim > (forward.splits - 1) * forward.k_per_split
    assert forward.k_per_split % forward.block_k == 0


def test_tile_plans_stay_small_on_the_interpreter():
    plan = he_loss.forward_plan(128, 10, 640, torch.float32, False, 1)
    assert plan.splits == 1 and plan.programs == 4
