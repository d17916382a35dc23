"""The small CNN's MaxPool2d(2), forward + input-gradient backward: torch's max_pool2d
(``reference`` in the JSON) against the native heat_fast.ops.max_pool.max_pool2d, on the
activation shape it pools in a small-cnn crafting step at B128 (after the second conv).

    python -m pytest benchmarks/test_bench_max_pool.py --benchmark-json max-pool.json
"""
import pytest
import torch

from benchutil import run_timed, skip_unless_runs
from heat_fast.ops.max_pool import max_pool2d

SHAPE = (128, 32, 32, 32)
SETTINGS = {"bf16 channels_last": (torch.bfloat16, torch.channels_last),
            "fp32 channels_last": (torch.float32, torch.channels_last),
            "fp32 NCHW": (torch.float32, torch.contiguous_format)}


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("setting", SETTINGS)
def test_max_pool_fwd_bwd(benchmark, backend, setting):
    dtype, memory_format = SETTINGS[setting]
    if backend == "native":
        skip_unless_runs("native", "cpu", dtype)
    torch.manual_seed(0)
    x = torch.randn(SHAPE).to(dtype).contiguous(memory_format=memory_format).requires_grad_(True)
    grad = torch.randn(SHAPE[0], SHAPE[1], SHAPE[2] // 2, SHAPE[3] // 2).to(dtype)
    grad = grad.contiguous(memory_format=memory_format)

    def step():
        y = max_pool2d(x, 2, backend=backend)
        torch.autograd.grad(y, x, grad)

    run_timed(benchmark, step, "cpu", f"max_pool2d(2) fwd+bwd small-cnn B128 {setting} cpu",
              backend, shape=list(SHAPE))
