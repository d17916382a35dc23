"""cos_margin_cross_entropy forward + backward per backend, against the plain-torch form
F.cross_entropy(s·(cos − m·onehot(y)), y) that ported AT_HE / BoT code writes.

Target (issue 12): the native loss at B256 C1000 on CPU at least as fast as that form,
ratio measured in one run (`python benchmarks/report.py` prints it against "reference").
"""
import pytest
import torch
import torch.nn.functional as F

import heat_fast as hf
from benchutil import DEVICES, run_timed, skip_unless_runs

SHAPES = {"cifar10": (128, 10), "imagenet": (256, 1000)}
IMPLEMENTATIONS = ("reference", "native", "triton")


def plain_torch(cos, y, scale=15.0, margin=0.2):
    """What the ported public code computes (the benchmark's reference)."""
    return F.cross_entropy(scale * (cos - margin * F.one_hot(y, cos.shape[1])), y)


@pytest.mark.parametrize("backend", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape_name", SHAPES)
@pytest.mark.parametrize("device", DEVICES)
def test_cos_margin_cross_entropy_fwd_bwd(benchmark, backend, shape_name, device):
    batch, classes = SHAPES[shape_name]
    if backend != "reference":
        skip_unless_runs(backend, device, torch.float32)
    gen = torch.Generator(device).manual_seed(0)
    cos = (2 * torch.rand(batch, classes, device=device, generator=gen) - 1).requires_grad_(True)
    y = torch.randint(0, classes, (batch,), device=device, generator=gen)
    loss_fn = plain_torch if backend == "reference" else (
        lambda c, t: hf.cos_margin_cross_entropy(c, t, backend=backend))

    def step():
        torch.autograd.grad(loss_fn(cos, y), (cos,))

    run_timed(benchmark, step, device,
              f"cos_margin_cross_entropy fwd+bwd {shape_name} B{batch} C{classes} {device}",
              backend, shape=[batch, classes])
