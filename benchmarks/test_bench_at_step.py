"""End-to-end PGD-10 adversarial-training step with HE (craft + update), images per second.

The baseline (``backend`` "reference" in the JSON, so benchmarks/report.py gives every ratio
against it) is a plain-torch loop in the style of the HE paper's public code
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
measured on every 10th step; malloc tuned on CPU), ``fp32`` (float32, NCHW) and ``compile``
(the default plus ``compile=True``).

Beside the wall time each case records the 1-minute load average before and after it, the
process CPU time and the minor page faults per step. Cases run baseline first: the
Trainer's malloc tuning (heat_fast.training.allocator) is process-wide and must not reach
the baseline. Run on CPU with OMP_NUM_THREADS unset (torch then uses every core) or set to
the number of cores, on a quiet machine; compare ratios of one run only.

On a shared machine whose load changes between cases, the last test times the baseline, the
default and the compiled step alternately (``interleaved``: one round = one step of each, so
all see the same load) and records in ``extra_info`` the medians, the baseline/default ratio
of medians and each pair's median per-round ratio; it runs after the Trainer has tuned
malloc, which then helps the baseline too (a conservative ratio).
"""
import os
import resource
import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchutil import run_timed
from heat_fast.models import build_model
from heat_fast.models.pooling import MaxPool
from heat_fast.training import Trainer

EPS, ALPHA, STEPS, SCALE, MARGIN = 8 / 255, 2 / 255, 10, 15.0, 0.2
CASES = {
    "cpu": [("small-cnn", 128), ("preact-resnet18", 32)],
    "cuda": [("preact-resnet18", 128), ("wrn-34-10", 128)],
}
VARIANTS = ("plain-at-he", "default", "fp32", "compile")
PARAMS = [(variant, device, model, batch) for variant in VARIANTS
          for device in CASES for model, batch in CASES[device]]


def _with_torch_pooling(model: nn.Module) -> nn.Module:
    """``model`` with every heat_fast MaxPool swapped for the ``nn.MaxPool2d`` it equals (same
    values and gradients), so that the baseline's body is plain torch throughout."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, MaxPool):
                setattr(module, name, nn.MaxPool2d(child.kernel_size))
    return model


class _AtHeNet(nn.Module):
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


def _plain_at_he_step(model, optimizer, x, y):
    """One AT_HE-style PGD-AT + HE step (see the module docstring)."""
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


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def _step_fn(variant, model, x, y):
    """The step to time and the settings it runs with."""
    if variant == "plain-at-he":
        net = _AtHeNet(model).to(x.device)
        optimizer = _sgd(net)
        return (lambda: _plain_at_he_step(net, optimizer, x, y)), "float32, NCHW"
    optimizer = _sgd(model)
    options = {"default": {}, "fp32": {"bf16": False, "channels_last": False},
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


def _usage():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


@pytest.mark.parametrize("variant,device,model_name,batch", PARAMS)
def test_pgd10_at_step_he(benchmark, variant, device, model_name, batch):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    torch.manual_seed(0)
    model = build_model(model_name, 10, he=True).to(device)
    gen = torch.Generator(device).manual_seed(1)
    x = torch.rand(batch, 3, 32, 32, device=device, generator=gen)
    y = torch.randint(0, 10, (batch,), device=device, generator=gen)
    step, settings = _step_fn(variant, model, x, y)
    for _ in range(2):  # compiles, fills caches and the allocator outside the counts
        step()
    calls = [0]

    def counted():
        step()
        calls[0] += 1

    load_before, (cpu_before, faults_before) = os.getloadavg()[0], _usage()
    run_timed(benchmark, counted, device, f"PGD-10 AT step + HE, {model_name} B{batch} {device}",
              "reference" if variant == "plain-at-he" else variant, images_per_step=batch)
    cpu_after, faults_after = _usage()
    benchmark.extra_info.update(
        variant=variant, settings=settings, threads=torch.get_num_threads(),
        omp_num_threads=os.environ.get("OMP_NUM_THREADS", "unset"),
        loadavg_before=load_before, loadavg_after=os.getloadavg()[0],
        cpu_seconds_per_step=(cpu_after - cpu_before) / calls[0],
        minor_faults_per_step=(faults_after - faults_before) / calls[0])


INTERLEAVED = ("plain-at-he", "default", "compile")


@pytest.mark.parametrize("device,model_name,batch", [("cpu", m, b) for m, b in CASES["cpu"]])
def test_pgd10_at_step_he_interleaved(benchmark, device, model_name, batch):
    steps, times = {}, {variant: [] for variant in INTERLEAVED}
    for variant in INTERLEAVED:
        torch.manual_seed(0)
        model = build_model(model_name, 10, he=True).to(device)
        gen = torch.Generator(device).manual_seed(1)
        x = torch.rand(batch, 3, 32, 32, device=device, generator=gen)
        y = torch.randint(0, 10, (batch,), device=device, generator=gen)
        steps[variant] = _step_fn(variant, model, x, y)[0]
        for _ in range(2):
            steps[variant]()

    def each():
        for variant, step in steps.items():
            start = time.perf_counter()
            step()
            times[variant].append(time.perf_counter() - start)

    def per_round(slow, fast):
        """Median over rounds of slow/fast, each round's pair timed under the same load."""
        return statistics.median(a / b for a, b in zip(times[slow][1:], times[fast][1:]))

    load_before = os.getloadavg()[0]
    benchmark.group = f"PGD-10 AT step + HE, {model_name} B{batch} {device}, interleaved"
    benchmark.pedantic(each, rounds=10, iterations=1, warmup_rounds=1)
    medians = {variant: statistics.median(t[1:]) for variant, t in times.items()}
    benchmark.extra_info.update(
        backend="interleaved", device=device, torch=torch.__version__,
        images_per_step=len(INTERLEAVED) * batch, loadavg_before=load_before,
        loadavg_after=os.getloadavg()[0], median_seconds=medians,
        min_seconds={v: min(t[1:]) for v, t in times.items()},
        ratio_of_medians=medians["plain-at-he"] / medians["default"],
        ratio_of_minimums=min(times["plain-at-he"][1:]) / min(times["default"][1:]),
        per_round_ratios={"default vs plain-at-he": per_round("plain-at-he", "default"),
                          "compile vs plain-at-he": per_round("plain-at-he", "compile"),
                          "compile vs default": per_round("default", "compile")})
