"""Test configuration: run Triton kernels on CPU tensors through the Triton interpreter.

TRITON_INTERPRET must be set before triton is imported, hence here. The ``fast_backend``
fixture yields every fast backend; one that cannot run is skipped with its reason, unless
it is named in HEAT_FAST_TEST_REQUIRE (comma list, set by CI), where that is a failure.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from heat_fast.ops import dispatch  # noqa: E402

FAST_BACKENDS = ("triton", "native")


def require_backend(name: str, device: torch.device = torch.device("cpu"),
                    dtype: torch.dtype = torch.float32) -> None:
    """Skip (or fail, when CI requires it) unless backend ``name`` runs on (device, dtype)."""
    reason = dispatch.unavailable_reason(name, device, dtype)
    if reason is None:
        return
    required = [n for n in os.environ.get("HEAT_FAST_TEST_REQUIRE", "").split(",") if n]
    if name in required:
        pytest.fail(f"backend {name!r} is required here but cannot run: {reason}")
    pytest.skip(f"backend {name!r} unavailable: {reason}")


def pytest_configure(config):
    # torch's inductor imports torch.utils.mkldnn, which warns about its own use of
    # torch.jit.script_method (torch 2.13): noise from torch, not from heat_fast.
    config.addinivalue_line(
        "filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.fixture(params=FAST_BACKENDS)
def fast_backend(request) -> str:
    require_backend(request.param)
    return request.param


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
