"""One PGD-10 adversarial-training step with HE (craft + update), images per second.

Variants: the fp32 eager reference path; the fused ops in fp32; on CUDA also the fused ops
under bf16 autocast with channels_last. GPU shapes follow SPEC §7 (PreActResNet-18 and
WRN-34-10, batch 128, CIFAR-10); the CPU case uses the small CNN so a round takes seconds.
"""
import pytest
import torch

from benchutil import run_timed
from heat_fast.models import build_model
from heat_fast.training import Objective, build_framework

CASES = {
    "cpu": [("small-cnn", 128)],
    "cuda": [("preact-resnet18", 128), ("wrn-34-10", 128)],
}
VARIANTS = {
    "reference": dict(backend="reference", bf16=False, channels_last=False),
    "fused": dict(backend="auto", bf16=False, channels_last=False),
    "fused-bf16-cl": dict(backend="auto", bf16=True, channels_last=True),
}
PARAMS = [(device, model, batch) for device in CASES for model, batch in CASES[device]]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("device,model_name,batch", PARAMS)
def test_pgd10_at_step(benchmark, device, model_name, batch, variant):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    if device == "cpu" and variant == "fused-bf16-cl":
        pytest.skip("bf16 autocast is a GPU variant")
    settings = VARIANTS[variant]
    torch.manual_seed(0)
    model = build_model(model_name, 10, he=True).to(device)
    memory_format = torch.channels_last if settings["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    framework = build_framework(
        "pgd-at", Objective(he=True, scale=15.0, margin=0.2, backend=settings["backend"],
                            bf16=settings["bf16"]),
        eps=8 / 255, alpha=2 / 255, steps=10, generator=torch.Generator(device).manual_seed(0))
    gen = torch.Generator(device).manual_seed(1)
    x = torch.rand(batch, 3, 32, 32, device=device, generator=gen).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,), device=device, generator=gen)
    model.train()
    run_timed(benchmark, lambda: framework.train_step(model, optimizer, x, y), device,
              f"PGD-10 AT step +HE {model_name} B{batch} {device}", variant,
              images_per_step=batch)
