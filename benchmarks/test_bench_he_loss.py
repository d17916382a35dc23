"""he_cross_entropy forward + backward per backend (SPEC §7 shapes).

CIFAR head: B128 D640 C10 (WRN-34-10); ImageNet head: B256 D2048 C1000 (ResNet-50).
"""
import pytest
import torch

import heat_fast as hf
from benchutil import BACKENDS, DEVICES, run_timed, skip_unless_runs

SHAPES = {"cifar": (128, 640, 10), "imagenet": (256, 2048, 1000)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _loss_step(backend: str):
    if backend == "compiled-reference":
        from heat_fast.reference import he_cross_entropy

        return torch.compile(he_cross_entropy)
    return lambda *args: hf.he_cross_entropy(*args, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("shape_name", SHAPES)
@pytest.mark.parametrize("device", DEVICES)
def test_he_cross_entropy_fwd_bwd(benchmark, backend, dtype_name, shape_name, device):
    dtype = DTYPES[dtype_name]
    if device == "cpu" and dtype != torch.float32:
        pytest.skip("CPU targets are float32")
    skip_unless_runs(backend, device, dtype)
    batch, dim, classes = SHAPES[shape_name]
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, dim, device=device, generator=gen).to(dtype).requires_grad_(True)
    w = torch.randn(classes, dim, device=device, generator=gen).to(dtype).requires_grad_(True)
    y = torch.randint(0, classes, (batch,), device=device, generator=gen)
    loss_fn = _loss_step(backend)

    def step():
        loss = loss_fn(x, w, y, 15.0, 0.2)
        torch.autograd.grad(loss, (x, w))

    run_timed(benchmark, step, device, f"he_cross_entropy fwd+bwd {shape_name} B{batch} D{dim} C{classes} {dtype_name} {device}",
              backend, dtype=dtype_name, shape=[batch, dim, classes])
