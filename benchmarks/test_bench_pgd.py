"""pgd_step per backend (SPEC §7 shapes): CIFAR 128×3×32×32 and ImageNet 64×3×224×224.

On CUDA a device-to-device copy of the same four tensors' bytes is timed too, so the
step's share of the measured copy bandwidth (3 reads + 1 write) can be reported.
"""
import pytest
import torch

import heat_fast as hf
from benchutil import BACKENDS, DEVICES, run_timed, skip_unless_runs

SHAPES = {"cifar": (128, 3, 32, 32), "imagenet": (64, 3, 224, 224)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _step_fn(backend: str):
    if backend == "compiled-reference":
        from heat_fast.reference import pgd_step

        return torch.compile(pgd_step)
    return lambda *args, **kwargs: hf.pgd_step(*args, backend=backend, **kwargs)


def _batch(shape, dtype, device):
    gen = torch.Generator(device).manual_seed(0)
    x_nat = torch.rand(shape, device=device, generator=gen).to(dtype)
    grad = torch.randn(shape, device=device, generator=gen).to(dtype)
    return x_nat.clone(), grad, x_nat


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("shape_name", SHAPES)
@pytest.mark.parametrize("device", DEVICES)
def test_pgd_step(benchmark, backend, norm, dtype_name, shape_name, device):
    dtype = DTYPES[dtype_name]
    if device == "cpu" and dtype != torch.float32:
        pytest.skip("CPU targets are float32")
    skip_unless_runs(backend, device, dtype)
    shape = SHAPES[shape_name]
    x_adv, grad, x_nat = _batch(shape, dtype, device)
    eps, alpha = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.1)
    step = _step_fn(backend)
    out = torch.empty_like(x_adv)
    run_timed(benchmark, lambda: step(x_adv, grad, x_nat, eps, alpha, norm, out=out), device,
              f"pgd_step {norm} {shape_name} {'x'.join(map(str, shape))} {dtype_name} {device}",
              backend, dtype=dtype_name, shape=list(shape), bytes_moved=4 * x_adv.numel() * x_adv.element_size())


@pytest.mark.parametrize("shape_name", SHAPES)
def test_copy_bandwidth(benchmark, shape_name):
    if not torch.cuda.is_available():
        pytest.skip("copy bandwidth is measured on CUDA only")
    shape = SHAPES[shape_name]
    src = torch.rand((2,) + shape, device="cuda")
    dst = torch.empty_like(src)
    run_timed(benchmark, lambda: dst.copy_(src), "cuda",
              f"copy {shape_name} {'x'.join(map(str, shape))} float32 cuda", "copy",
              bytes_moved=2 * src.numel() * src.element_size())
