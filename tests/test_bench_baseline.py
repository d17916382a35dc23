"""The end-to-end benchmark's baseline (benchmarks/at_step.py, ``plain-at-he``) is plain torch:
its AT_HE-style step dispatches no heat_fast op, while heat_fast's default step on the same
model does. (The baseline borrows heat_fast's model body and once carried heat_fast's native
max-pool into the "plain" loop unnoticed.)"""
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import require_backend
from heat_fast.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from at_step import step_fn  # noqa: E402


class _Namespaces(TorchDispatchMode):
    """Collects the namespace of every op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(func.namespace)
        return func(*args, **(kwargs or {}))


def _namespaces_of_one_step(variant: str, model_name: str) -> set:
    torch.manual_seed(0)
    model = build_model(model_name, 10, he=True)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (2,), generator=gen)
    step, _ = step_fn(variant, model, x, y)
    with _Namespaces() as recorded:
        step()
    return recorded.seen


@pytest.mark.parametrize("model_name", ["small-cnn", "preact-resnet18"])
def test_plain_baseline_dispatches_no_heat_fast_op(model_name):
    require_backend("native")
    assert "heat_fast_C" in _namespaces_of_one_step("default", model_name)
    plain = _namespaces_of_one_step("plain-at-he", model_name)
    assert "aten" in plain and "heat_fast_C" not in plain
