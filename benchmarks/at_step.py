"""The PGD-10 adversarial-training step with HE that the end-to-end benchmarks time
(benchmarks/test_bench_at_step.py on CPU, gpu/bench.py on a GPU), in its variants.

The baseline, ``plain-at-he``, is a plain-torch loop in the style of the HE paper's public code
(ShawnXYang/AT_HE), written here from its published algorithm: the model (heat_fast's
architecture with torch's ``nn.MaxPool2d``, as the public code pools, in place of heat_fast's
native max-pool) returns cosines from a bias-free head whose weight rows are overwritten with
their normalized values at every forward; PGD-10 with ε 8/255, step 2/255 from
x + 0.001·N(0, I), crafting on CE(s·cos) in eval mode; the update on CE(s·(cos − m·1_y)) with
SGD; float32, NCHW. (AT_HE evaluates that loss with a per-row Python loop; one
``F.cross_entropy`` computes the same value and only makes the baseline faster.)

heat_fast's variants run the same step through a :class:`heat_fast.training.Trainer`'s
framework with the Trainer's settings: ``default`` (bf16 autocast and channels_last where
the device computes bf16 natively, see heat_fast.training.precision; the clean accuracy
measured on every 10th step; malloc tuned on CPU), ``fp32`` (float32, NCHW), ``compile``
(the default plus ``compile=True``) and, for SPEC §7's GPU baseline, ``reference`` (float32,
NCHW, the reference path's ops).
"""
from typing import Callable, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat_fast.models.pooling import MaxPool
from heat_fast.training import Trainer

EPS, ALPHA, STEPS, SCALE, MARGIN = 8 / 255, 2 / 255, 10, 15.0, 0.2
VARIANTS = ("plain-at-he", "default", "fp32", "compile")  # the CPU suite's


def _with_torch_pooling(model: nn.Module) -> nn.Module:
    """``model`` with every heat_fast MaxPool swapped for the ``nn.MaxPool2d`` it equals (same
    values and gradients), so that the baseline's body is plain torch throughout."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, MaxPool):
                setattr(module, name, nn.MaxPool2d(child.kernel_size))
    return model


class AtHeNet(nn.Module):
    """AT_HE's HE network: body features, normalized, times a weight row-normalized in place
    at every forward (no gradient through that normalization); returns cos θ (B, C)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        # a heat_fast model for its normalization and body only, with torch's pooling
        self.model = _with_torch_pooling(model)
        self.fc = nn.Linear(model.head.weight.shape[1], model.head.weight.shape[0], bias=False)

    def forward(self, x):
        self.fc.weight.data = F.normalize(self.fc.weight, p=2, dim=1)
        return self.fc(F.normalize(self.model.features(x), p=2, dim=1))


def plain_at_he_step(model, optimizer, x, y):
    """One AT_HE-style PGD-AT + HE step (see the module docstring) of ``model`` (an
    :class:`AtHeNet`) on the batch (x, y)."""
    model.eval()
    x_adv = x + 0.001 * torch.randn_like(x)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(SCALE * model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + ALPHA * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0.0, 1.0)
    model.train()
    optimizer.zero_grad()
    cos = model(x_adv)
    loss = F.cross_entropy(SCALE * (cos - MARGIN * F.one_hot(y, cos.shape[1])), y)
    loss.backward()
    optimizer.step()


def sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def step_fn(variant: str, model: nn.Module, x: Tensor,
            y: Tensor) -> Tuple[Callable[[], None], str]:
    """The step of ``variant`` (one of VARIANTS or "reference") for ``model`` (on x's device)
    on the batch (x, y), as a no-argument callable, and the settings it runs with, in words."""
    if variant == "plain-at-he":
        net = AtHeNet(model).to(x.device)
        optimizer = sgd(net)
        return (lambda: plain_at_he_step(net, optimizer, x, y)), "float32, NCHW"
    optimizer = sgd(model)
    options = {"default": {}, "fp32": {"bf16": False, "channels_last": False},
               "reference": {"backend": "reference", "bf16": False, "channels_last": False},
               "compile": {"compile": True}}[variant]
    trainer = Trainer(model, optimizer, [], "pgd-at", he=True, scale=SCALE, margin=MARGIN,
                      eps=EPS, alpha=ALPHA, steps=STEPS, start="normal", progress=False,
                      seed=0, **options)
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    calls = [0]

    def step():
        trainer.framework.train_step(trainer.train_model, optimizer, x, y,
                                     measure_clean=calls[0] % trainer.clean_acc_every == 0)
        calls[0] += 1

    path = trainer.fast_path
    settings = (f"{'bf16' if path.bf16 else 'float32'}, "
                f"{'channels_last' if path.channels_last else 'NCHW'}"
                f"{', compiled' if variant == 'compile' else ''}")
    return step, settings
