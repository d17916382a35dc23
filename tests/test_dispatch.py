"""Backend dispatch (SPEC §2.3): auto choice, the environment override, clear refusals."""
import pytest
import torch

import heat_fast as hf
from heat_fast.cli import main as cli_main
from heat_fast.ops import dispatch
from heat_fast.training import precision

CPU = torch.device("cpu")


def test_explicit_reference_always_runs():
    assert hf.resolve_backend("reference", CPU, torch.float32) == "reference"


def test_auto_on_cpu_never_picks_the_interpreter():
    assert hf.resolve_backend("auto", CPU, torch.float32) in ("native", "reference")


def test_environment_variable_forces_a_backend(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    assert hf.resolve_backend("auto", CPU, torch.float32) == "triton"
    assert hf.resolve_backend(None, CPU, torch.float32) == "triton"
    assert hf.resolve_backend("reference", CPU, torch.float32) == "reference"
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda-magic")
    with pytest.raises(ValueError, match=dispatch.ENV_VAR):
        hf.resolve_backend("auto", CPU, torch.float32)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be"):
        hf.resolve_backend("fastest", CPU, torch.float32)


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(hf.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        hf.pgd_step(torch.rand(2, 3), torch.randn(2, 3), torch.rand(2, 3), 0.1, 0.01, backend="triton")


def test_unavailable_native_says_why(monkeypatch):
    monkeypatch.setenv("HEAT_FAST_DISABLE_NATIVE", "1")
    with pytest.raises(hf.BackendUnavailableError, match="native"):
        hf.he_cross_entropy(torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 1]), backend="native")
    assert hf.resolve_backend("auto", CPU, torch.float32) == "reference"


def test_info_lists_every_backend(capsys):
    assert cli_main(["info"]) == 0
    printed = capsys.readouterr().out
    for name in dispatch.BACKENDS:
        assert name in printed
    assert torch.__version__ in printed and "auto on cpu" in printed
    path = precision.fast_path("cpu")
    assert f"training on cpu: {precision.describe('cpu', path.bf16, path.channels_last)}" in printed


def test_unknown_subcommand_exits_2(capsys):
    assert cli_main(["frobnicate"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err


def test_backend_of_the_wrong_type_is_a_clear_error():
    x = torch.rand(2, 3)
    with pytest.raises(TypeError, match="backend must be 'auto' or one of"):
        hf.pgd_step(x, x, x, 0.1, 0.01, backend=1)


def test_triton_backend_loads_on_first_use_also_inside_torch_compile():
    """heat_fast imports triton on first use; a process whose first Triton call is traced by
    torch.compile(fullgraph=True) loads it outside the graph (the availability check is a
    constant under compile) and computes what eager computes."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os, sys
        os.environ["TRITON_INTERPRET"] = "1"
        import torch, heat_fast as hf
        assert "heat_fast.triton_kernels" not in sys.modules
        gen = torch.Generator().manual_seed(0)
        cos, y = torch.rand(6, 5, generator=gen) * 2 - 1, torch.randint(0, 5, (6,), generator=gen)
        step = lambda c: hf.cos_margin_cross_entropy(c.tanh(), y, backend="triton")
        got = torch.compile(step, fullgraph=True)(cos)
        assert "heat_fast.triton_kernels" in sys.modules
        torch.testing.assert_close(got, step(cos))
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
