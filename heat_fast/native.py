"""The native backend: the compiled extension heat_fast._C (csrc/).

C++ CPU kernels always, CUDA kernels when the extension was built with CUDA. Importing this
module loads nothing; the extension is loaded on first use, and a built extension that fails
to load (for example one built for another torch) warns once and leaves the backend
unavailable, so ``backend="auto"`` falls back to the others. ``HEAT_FAST_DISABLE_NATIVE=1``
makes the backend unavailable at run time.

Kernel functions (contracts in heat_fast.ops.he_loss, heat_fast.ops.cos_loss and
heat_fast.ops.pgd): ``he_ce_forward``, ``he_ce_backward``, ``cos_ce_forward``, ``pgd_step_``
and ``random_init_``; they call the
dispatcher ops ``torch.ops.heat_fast_C.*``, whose fake implementations are registered here.
The per-channel affine + ReLU ops ``heat_fast_C::affine_relu`` and ``affine_relu_backward``
and the max-pool ops ``heat_fast_C::max_pool2d`` and ``max_pool2d_backward`` (CPU only) are
called by heat_fast.ops.affine_relu and heat_fast.ops.max_pool directly.
``he_cross_entropy`` is the whole differentiable loss, reduced inside the op
``heat_fast_C::he_cross_entropy``, whose autograd is C++ (no Python autograd wrapper).
``BUILD_INFO`` is the build metadata (torch, cuda, compiler, with_cuda, ...), empty when the
extension was never built.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

DISABLE_ENV = "HEAT_FAST_DISABLE_NATIVE"
REBUILD = "pip install --no-build-isolation -e ."
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}  # heat_fast_C::he_cross_entropy's codes (ATen's)


def _recorded_build_info() -> Dict[str, Any]:
    """What setup.py recorded in heat_fast/_build_info.py ({} when it did not run)."""
    try:
        module = importlib.import_module("heat_fast._build_info")
    except ImportError:
        return {}
    return dict(module.BUILD_INFO)


def _running() -> str:
    return f"torch {torch.__version__} / CUDA {torch.version.cuda}"


def _built_for(info: Dict[str, Any]) -> str:
    if not info:
        return "an unrecorded torch (no heat_fast/_build_info.py)"
    return f"torch {info.get('torch')} / CUDA {info.get('cuda')}"


@functools.lru_cache(maxsize=None)
def _load() -> Tuple[Optional[Any], Optional[str], Dict[str, Any]]:
    """(extension module or None, why it is unusable or None, build info), computed once."""
    info = _recorded_build_info()
    if info and info.get("torch") != torch.__version__:
        return None, _unusable(info, "was not loaded (the torch versions differ)"), info
    try:
        module = importlib.import_module("heat_fast._C")
    except ModuleNotFoundError as error:
        if error.name != "heat_fast._C":
            return None, _unusable(info, f"failed to load ({error})"), info
        return None, (f"the extension heat_fast._C is not built (installed with "
                      f"HEAT_FAST_NO_NATIVE=1, or not installed); build it with `{REBUILD}`"), info
    except (ImportError, OSError) as error:
        return None, _unusable(info, f"failed to load ({error})"), info
    info = {**module.build_info(), **info}
    _register_fakes()
    return module, None, info


def _unusable(info: Dict[str, Any], what: str) -> str:
    """The reason a built extension cannot be used, warned once (the caller is cached)."""
    reason = (f"the extension heat_fast._C built for {_built_for(info)} {what} under "
              f"{_running()}; rebuild it with `{REBUILD}`")
    warnings.warn(f"heat_fast: native backend disabled: {reason}", RuntimeWarning, stacklevel=3)
    return reason


def constant_under_compile(fn):
    """Mark ``fn`` as torch.compiler.assume_constant_result does (evaluated once, a constant,
    when torch.compile traces a caller) without importing torch._dynamo at import time."""
    fn._dynamo_marked_constant = True
    return fn


@functools.lru_cache(maxsize=None)
def _register_fakes() -> None:
    def stat_dtype(t: Tensor) -> torch.dtype:
        return torch.float64 if t.dtype == torch.float64 else torch.float32

    @torch.library.register_fake("heat_fast_C::he_ce_forward")
    def _(features, weight, target, scale, margin, label_smoothing, feature_norm, weight_norm):
        dtype = stat_dtype(features)
        batch, classes = features.shape[0], weight.shape[0]
        return (features.new_empty((batch,), dtype=dtype),
                features.new_empty((batch, classes), dtype=dtype),
                features.new_empty((batch,), dtype=dtype),
                features.new_empty((classes,), dtype=dtype))

    @torch.library.register_fake("heat_fast_C::cos_ce_forward")
    def _(cos, target, scale, margin, label_smoothing):
        dtype = stat_dtype(cos)
        return cos.new_empty((cos.shape[0],), dtype=dtype), cos.new_empty(cos.shape, dtype=dtype)

    @torch.library.register_fake("heat_fast_C::he_cross_entropy")
    def _(features, weight, target, scale, margin, label_smoothing, feature_norm, weight_norm,
          reduction):
        shape = (features.shape[0],) if reduction == REDUCTIONS["none"] else ()
        return features.new_empty(shape, dtype=stat_dtype(features))

    @torch.library.register_fake("heat_fast_C::he_ce_chunked_forward")
    def _(features, weight, target, scale, margin, label_smoothing, feature_norm, weight_norm,
          chunk):
        dtype = stat_dtype(features)
        batch, classes = features.shape[0], weight.shape[0]
        rows = [features.new_empty((batch,), dtype=dtype) for _ in range(4)]
        return (*rows, features.new_empty((classes,), dtype=dtype))

    @torch.library.register_fake("heat_fast_C::he_ce_chunked_backward")
    def _(grad_rows, features, weight, target, lse, target_grad, feature_norms, weight_norms,
          scale, label_smoothing, feature_norm, weight_norm, chunk):
        return torch.empty_like(features), torch.empty_like(weight)

    @torch.library.register_fake("heat_fast_C::he_ce_backward")
    def _(grad_rows, features, weight, grad_cos, feature_norms, weight_norms, feature_norm,
          weight_norm):
        return torch.empty_like(features), torch.empty_like(weight)

    @torch.library.register_fake("heat_fast_C::affine_relu")
    def _(x, scale, shift):
        return torch.empty_like(x)

    @torch.library.register_fake("heat_fast_C::affine_relu_backward")
    def _(grad, y, scale):
        return torch.empty_like(y)

    @torch.library.register_fake("heat_fast_C::max_pool2d")
    def _(x, kernel):
        layout = (torch.channels_last if not x.is_contiguous()
                  and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        shape = (x.shape[0], x.shape[1], x.shape[2] // kernel, x.shape[3] // kernel)
        return (torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout),
                torch.empty(shape, dtype=torch.uint8, device=x.device, memory_format=layout))

    @torch.library.register_fake("heat_fast_C::max_pool2d_backward")
    def _(grad, argmax, kernel, height, width, channels_last):
        layout = torch.channels_last if channels_last else torch.contiguous_format
        shape = (grad.shape[0], grad.shape[1], height, width)
        return torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=layout)

    @torch.library.register_fake("heat_fast_C::pgd_step_")
    def _(out, start, grad, x_nat, eps, alpha, clip_lo, clip_hi, norm, delta):
        return None

    @torch.library.register_fake("heat_fast_C::random_init_")
    def _(out, x_nat, eps, clip_lo, clip_hi, seed, norm):
        return None


def __getattr__(name: str) -> Any:
    if name == "BUILD_INFO":
        return dict(_load()[2])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@constant_under_compile
def unavailable_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """None when the native kernels can run on (device, dtype), else a sentence saying why.

    Evaluated eagerly (a constant) when torch.compile traces a caller.
    """
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        return f"disabled by the environment variable {DISABLE_ENV}"
    module, reason, info = _load()
    if module is None:
        return reason
    if dtype not in DTYPES:
        return f"no native kernels for {dtype} (float32, float16, bfloat16, float64 only)"
    device = torch.device(device)
    if device.type == "cuda" and not info.get("with_cuda"):
        return ("heat_fast._C was built without CUDA kernels; rebuild with nvcc and a CUDA "
                f"build of torch (or HEAT_FAST_FORCE_CUDA=1 and TORCH_CUDA_ARCH_LIST): `{REBUILD}`")
    if device.type not in ("cpu", "cuda"):
        return f"no native kernels for {device.type} tensors (cpu and cuda only)"
    return None


def cpu_isa() -> Optional[str]:
    """The instruction set the native CPU kernels run ("avx512", "avx2" with FMA, or
    "baseline"): the widest this CPU has, capped by HEAT_FAST_CPU_ISA; None when the
    extension is not loaded. Raises ValueError for an unknown HEAT_FAST_CPU_ISA."""
    module = _load()[0]
    if module is None:
        return None
    try:
        return module.cpu_isa()
    except RuntimeError as error:  # the C++ check's message, without its C++ context
        raise ValueError(str(error).splitlines()[0]) from None


@constant_under_compile
def _load_failure() -> Optional[str]:
    """Loads the extension; None on success, else why not (a constant under torch.compile)."""
    return _load()[1]


def _ops() -> Any:
    reason = _load_failure()
    if reason is not None:
        raise RuntimeError(f"heat_fast native backend unavailable: {reason}")
    return torch.ops.heat_fast_C


def he_ce_forward(features: Tensor, weight: Tensor, target: Tensor, scale: float, margin: float,
                  label_smoothing: float, feature_norm: bool, weight_norm: bool
                  ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss_rows, grad_cos, feature_norms, weight_norms); see heat_fast.ops.he_loss."""
    return _ops().he_ce_forward.default(features, weight, target, scale, margin,
                                        label_smoothing, feature_norm, weight_norm)


def he_ce_chunked_forward(features: Tensor, weight: Tensor, target: Tensor, scale: float,
                          margin: float, label_smoothing: float, feature_norm: bool,
                          weight_norm: bool, chunk: int) -> Tuple[Tensor, ...]:
    """(loss_rows, lse, target_grad, feature_norms, weight_norms); see
    heat_fast.ops.he_loss_chunked."""
    return _ops().he_ce_chunked_forward.default(features, weight, target, scale, margin,
                                                label_smoothing, feature_norm, weight_norm, chunk)


def he_ce_chunked_backward(grad_rows: Tensor, features: Tensor, weight: Tensor, target: Tensor,
                           lse: Tensor, target_grad: Tensor, feature_norms: Tensor,
                           weight_norms: Tensor, scale: float, label_smoothing: float,
                           feature_norm: bool, weight_norm: bool, chunk: int
                           ) -> Tuple[Tensor, Tensor]:
    """(d_features, d_weight) in the input dtypes; see heat_fast.ops.he_loss_chunked."""
    return _ops().he_ce_chunked_backward.default(grad_rows, features, weight, target, lse,
                                                 target_grad, feature_norms, weight_norms, scale,
                                                 label_smoothing, feature_norm, weight_norm, chunk)


def he_cross_entropy(features: Tensor, weight: Tensor, target: Tensor, scale: float,
                     margin: float, label_smoothing: float, feature_norm: bool,
                     weight_norm: bool, reduction: str) -> Tensor:
    """The HE loss reduced by ``reduction`` ("none", "mean", "sum"), differentiable w.r.t.
    features and weight through the op's C++ autograd; float32 (float64 for float64 inputs)."""
    return _ops().he_cross_entropy.default(features, weight, target, scale, margin,
                                           label_smoothing, feature_norm, weight_norm,
                                           REDUCTIONS[reduction])


def he_ce_backward(grad_rows: Tensor, features: Tensor, weight: Tensor, grad_cos: Tensor,
                   feature_norms: Tensor, weight_norms: Tensor, feature_norm: bool,
                   weight_norm: bool) -> Tuple[Tensor, Tensor]:
    """(d_features, d_weight) in the input dtypes; see heat_fast.ops.he_loss."""
    return _ops().he_ce_backward.default(grad_rows, features, weight, grad_cos, feature_norms,
                                         weight_norms, feature_norm, weight_norm)


def cos_ce_forward(cos: Tensor, target: Tensor, scale: float, margin: float,
                   label_smoothing: float) -> Tuple[Tensor, Tensor]:
    """(loss_rows, grad_cos) of cosines (B, C); see heat_fast.ops.cos_loss."""
    return _ops().cos_ce_forward.default(cos, target, scale, margin, label_smoothing)


def pgd_step_(out: Tensor, start: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor,
              alpha: Tensor, clip_lo: Tensor, clip_hi: Tensor, norm: str, delta: bool) -> None:
    """Writes the projected step of start into out (which may be an input); see
    heat_fast.ops.pgd."""
    _ops().pgd_step_.default(out, start, grad, x_nat, eps, alpha, clip_lo, clip_hi, norm, delta)


def random_init_(out: Tensor, x_nat: Tensor, eps: Tensor, clip_lo: Tensor, clip_hi: Tensor,
                 seed: Tensor, norm: str) -> None:
    """Writes a random start drawn from seed into out; see heat_fast.ops.pgd."""
    _ops().random_init_.default(out, x_nat, eps, clip_lo, clip_hi, seed, norm)
