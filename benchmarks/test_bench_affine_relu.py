"""The crafting pre-activation relu(bn(x)) (eval-mode BN, frozen), forward + input-gradient
backward: BatchNorm2d and ReLU as modules (``reference`` in the JSON) against the native
one-pass heat_fast.ops.affine_relu.batch_norm_relu, on the activation shapes of
PreActResNet-18's first stage (B32) and WRN-34-10's (B128 would be 16× larger; B8 here).

    python -m pytest benchmarks/test_bench_affine_relu.py --benchmark-json affine-relu.json
"""
import pytest
import torch
from torch import nn

from benchutil import run_timed, skip_unless_runs
from heat_fast.ops import affine_relu as affine_relu_module

SHAPES = {"preact-resnet18 stage 1 B32": (32, 64, 32, 32), "wrn-34-10 stage 1 B8": (8, 160, 32, 32)}
SETTINGS = {"bf16 channels_last": (torch.bfloat16, torch.channels_last),
            "fp32 NCHW": (torch.float32, torch.contiguous_format)}


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("shape_name", SHAPES)
def test_batch_norm_relu_fwd_bwd(benchmark, monkeypatch, backend, setting, shape_name):
    dtype, memory_format = SETTINGS[setting]
    if backend == "native":
        skip_unless_runs("native", "cpu", dtype)
    else:
        monkeypatch.setattr(affine_relu_module, "_fusable", lambda *args: False)
    shape = SHAPES[shape_name]
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(shape[1])
    with torch.no_grad():
        bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    bn.eval().requires_grad_(False)
    relu = nn.ReLU()
    x = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format).requires_grad_(True)
    grad = torch.randn_like(x)

    def step():
        y = affine_relu_module.batch_norm_relu(bn, relu, x)
        torch.autograd.grad(y, x, grad)

    run_timed(benchmark, step, "cpu", f"relu(bn(x)) eval fwd+bwd {shape_name} {setting} cpu",
              backend, shape=list(shape))
