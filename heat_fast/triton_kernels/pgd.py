"""Triton kernels of the batched projected step (position and delta form) and random start.

Tensors are viewed as (B, N) rows, one row per sample; offsets are 64-bit. L∞ is one
elementwise pass (3 reads + 1 write). L2 needs two per-sample reductions (‖g‖, then ‖δ‖),
accumulated in float64 so that Σg² cannot overflow: a sample of up to ``SINGLE_PROGRAM_MAX``
elements is handled by one program that holds it in registers; larger samples use a split
reduction (per-chunk partial sums, summed in a fixed order, so results are deterministic) and
a final write pass, each over a one-dimensional grid of B × chunks programs (no grid dimension
near its 65,535 limit). Writes happen only in the last pass, each element after its own
reads, so ``out`` may alias an input. Math in float32 (float64 for float64 inputs); min/max
propagate NaN as torch does. The random start draws Philox numbers from a seed read on the
device.

A budget (eps, alpha, a clip bound) reaches a kernel in one of three forms (constexpr MODE):
SCALAR, a float argument; PER_SAMPLE, one value per row; GENERAL, ``values[(i // inner) %
period]`` for flat element i, which covers per-channel and any other broadcast whose varying
dimensions are adjacent (others are expanded to one value per element).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import triton
import triton.language as tl

from heat_fast.triton_kernels.common import acc_dtype, on_device, tl_dtype

NORM_EPS = tl.constexpr(1e-12)
SCALAR = tl.constexpr(0)
PER_SAMPLE = tl.constexpr(1)
GENERAL = tl.constexpr(2)
ELEMENT_BLOCK = 1024
CHUNK = 1024
SINGLE_PROGRAM_MAX = 8192

Pattern = Tuple[int, float, torch.Tensor, int, int]  # (mode, value, values, inner, period)


@triton.jit
def _clamp(x, lo, hi):
    low = tl.maximum(x, lo, propagate_nan=tl.PropagateNan.ALL)
    return tl.minimum(low, hi, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _budget(offs, ok, row, value, ptr, inner, period, MODE: tl.constexpr):
    """The budget of flat elements ``offs`` (mask ``ok``) in sample(s) ``row``, float32."""
    if MODE == 0:
        return tl.cast(value, tl.float32)
    elif MODE == 1:
        return tl.load(ptr + row + offs * 0, mask=ok, other=0.0)
    else:
        return tl.load(ptr + (offs // inner) % period)


@triton.jit
def _sign_step(g, alpha):
    return tl.where(g > 0, alpha, tl.where(g < 0, -alpha, 0.0))  # NaN: no step


@triton.jit
def _finite_or_zero(g):
    return tl.where(tl.abs(g) < float("inf"), g, 0.0)


@triton.jit
def _linf_step_kernel(
    out_ptr, s_ptr, g_ptr, xn_ptr, total, N,
    e_val, e_ptr, e_inner, e_period, a_val, a_ptr, a_inner, a_period,
    lo_val, lo_ptr, lo_inner, lo_period, hi_val, hi_ptr, hi_inner, hi_period,
    E_MODE: tl.constexpr, A_MODE: tl.constexpr, LO_MODE: tl.constexpr, HI_MODE: tl.constexpr,
    DELTA: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < total
    row = offs // N
    eps = _budget(offs, ok, row, e_val, e_ptr, e_inner, e_period, E_MODE).to(ACC)
    alpha = _budget(offs, ok, row, a_val, a_ptr, a_inner, a_period, A_MODE).to(ACC)
    lo = _budget(offs, ok, row, lo_val, lo_ptr, lo_inner, lo_period, LO_MODE).to(ACC)
    hi = _budget(offs, ok, row, hi_val, hi_ptr, hi_inner, hi_period, HI_MODE).to(ACC)
    s = tl.load(s_ptr + offs, mask=ok, other=0.0).to(ACC)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(ACC)
    xn = tl.load(xn_ptr + offs, mask=ok, other=0.0).to(ACC)
    moved = s + _sign_step(g, alpha)
    if DELTA:
        result = _clamp(_clamp(moved, -eps, eps), lo - xn, hi - xn)
    else:
        result = _clamp(_clamp(moved, xn - eps, xn + eps), lo, hi)
    tl.store(out_ptr + offs, result.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _l2_write(out_ptr, s_ptr, g_ptr, xn_ptr, offs, ok, row, alpha, inv_g, eps, d_norm,
              lo_val, lo_ptr, lo_inner, lo_period, hi_val, hi_ptr, hi_inner, hi_period,
              LO_MODE: tl.constexpr, HI_MODE: tl.constexpr, DELTA: tl.constexpr,
              ACC: tl.constexpr):
    """x' (or δ') of the elements ``offs`` of sample ``row`` given ‖g‖⁻¹ and ‖δ‖."""
    g = _finite_or_zero(tl.load(g_ptr + offs, mask=ok, other=0.0).to(ACC))
    s = tl.load(s_ptr + offs, mask=ok, other=0.0).to(ACC)
    xn = tl.load(xn_ptr + offs, mask=ok, other=0.0).to(ACC)
    lo = _budget(offs, ok, row, lo_val, lo_ptr, lo_inner, lo_period, LO_MODE).to(ACC)
    hi = _budget(offs, ok, row, hi_val, hi_ptr, hi_inner, hi_period, HI_MODE).to(ACC)
    shrink = tl.minimum(eps / d_norm, 1.0)
    if DELTA:
        result = _clamp((s + alpha * (g * inv_g)) * shrink, lo - xn, hi - xn)
    else:
        result = _clamp(xn + (s + alpha * (g * inv_g) - xn) * shrink, lo, hi)
    tl.store(out_ptr + offs, result.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _l2_moved(s_ptr, g_ptr, xn_ptr, offs, ok, alpha, inv_g, DELTA: tl.constexpr,
              ACC: tl.constexpr):
    """δ before the projection: s + α·g/‖g‖ (− x_nat in position form), 0 outside ``ok``."""
    g = _finite_or_zero(tl.load(g_ptr + offs, mask=ok, other=0.0).to(ACC))
    s = tl.load(s_ptr + offs, mask=ok, other=0.0).to(ACC)
    d = s + alpha * (g * inv_g)
    if not DELTA:
        d -= tl.load(xn_ptr + offs, mask=ok, other=0.0).to(ACC)
    return tl.where(ok, d, 0.0)


@triton.jit
def _scalar_budget(row, N, value, ptr, inner, period, MODE: tl.constexpr):
    """A per-sample budget (eps, alpha of L2) of sample ``row``, float32."""
    if MODE == 0:
        return tl.cast(value, tl.float32)
    elif MODE == 1:
        return tl.load(ptr + row)
    else:
        return tl.load(ptr + (row * N // inner) % period)


@triton.jit
def _inverse_norm(sum_sq):
    return 1.0 / tl.maximum(tl.sqrt(sum_sq), NORM_EPS)


@triton.jit
def _l2_step_single_kernel(
    out_ptr, s_ptr, g_ptr, xn_ptr, N,
    e_val, e_ptr, e_inner, e_period, a_val, a_ptr, a_inner, a_period,
    lo_val, lo_ptr, lo_inner, lo_period, hi_val, hi_ptr, hi_inner, hi_period,
    E_MODE: tl.constexpr, A_MODE: tl.constexpr, LO_MODE: tl.constexpr, HI_MODE: tl.constexpr,
    DELTA: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    offs = row * N + cols
    eps = _scalar_budget(row, N, e_val, e_ptr, e_inner, e_period, E_MODE).to(ACC)
    alpha = _scalar_budget(row, N, a_val, a_ptr, a_inner, a_period, A_MODE).to(ACC)
    g = _finite_or_zero(tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float64))
    inv_g = _inverse_norm(tl.sum(g * g, axis=0)).to(ACC)
    d = _l2_moved(s_ptr, g_ptr, xn_ptr, offs, ok, alpha, inv_g, DELTA, ACC).to(tl.float64)
    d_norm = tl.maximum(tl.sqrt(tl.sum(d * d, axis=0)), NORM_EPS).to(ACC)
    _l2_write(out_ptr, s_ptr, g_ptr, xn_ptr, offs, ok, row, alpha, inv_g, eps, d_norm,
              lo_val, lo_ptr, lo_inner, lo_period, hi_val, hi_ptr, hi_inner, hi_period,
              LO_MODE, HI_MODE, DELTA, ACC)


@triton.jit
def _l2_grad_sq_kernel(g_ptr, partial_ptr, N, chunks, CHUNK: tl.constexpr):
    """partial[row, chunk] = Σ g² (float64) over one chunk of one sample (non-finite g as 0)."""
    row = (tl.program_id(0) // chunks).to(tl.int64)
    chunk = tl.program_id(0) % chunks
    cols = chunk * CHUNK + tl.arange(0, CHUNK)
    ok = cols < N
    g = _finite_or_zero(tl.load(g_ptr + row * N + cols, mask=ok, other=0.0).to(tl.float64))
    tl.store(partial_ptr + row * chunks + chunk, tl.sum(g * g, axis=0))


@triton.jit
def _l2_delta_sq_kernel(s_ptr, g_ptr, xn_ptr, g_sq_ptr, partial_ptr, N, chunks,
                        a_val, a_ptr, a_inner, a_period, A_MODE: tl.constexpr,
                        DELTA: tl.constexpr, ACC: tl.constexpr, CHUNK: tl.constexpr):
    """partial[row, chunk] = Σ δ² (float64) over one chunk, δ before the projection."""
    row = (tl.program_id(0) // chunks).to(tl.int64)
    chunk = tl.program_id(0) % chunks
    cols = chunk * CHUNK + tl.arange(0, CHUNK)
    ok = cols < N
    alpha = _scalar_budget(row, N, a_val, a_ptr, a_inner, a_period, A_MODE).to(ACC)
    inv_g = _inverse_norm(tl.load(g_sq_ptr + row)).to(ACC)
    d = _l2_moved(s_ptr, g_ptr, xn_ptr, row * N + cols, ok, alpha, inv_g, DELTA,
                  ACC).to(tl.float64)
    tl.store(partial_ptr + row * chunks + chunk, tl.sum(d * d, axis=0))


@triton.jit
def _l2_write_kernel(
    out_ptr, s_ptr, g_ptr, xn_ptr, g_sq_ptr, d_sq_ptr, N, chunks,
    e_val, e_ptr, e_inner, e_period, a_val, a_ptr, a_inner, a_period,
    lo_val, lo_ptr, lo_inner, lo_period, hi_val, hi_ptr, hi_inner, hi_period,
    E_MODE: tl.constexpr, A_MODE: tl.constexpr, LO_MODE: tl.constexpr, HI_MODE: tl.constexpr,
    DELTA: tl.constexpr, ACC: tl.constexpr, CHUNK: tl.constexpr,
):
    row = (tl.program_id(0) // chunks).to(tl.int64)
    cols = (tl.program_id(0) % chunks) * CHUNK + tl.arange(0, CHUNK)
    ok = cols < N
    eps = _scalar_budget(row, N, e_val, e_ptr, e_inner, e_period, E_MODE).to(ACC)
    alpha = _scalar_budget(row, N, a_val, a_ptr, a_inner, a_period, A_MODE).to(ACC)
    inv_g = _inverse_norm(tl.load(g_sq_ptr + row)).to(ACC)
    d_norm = tl.maximum(tl.sqrt(tl.load(d_sq_ptr + row)), NORM_EPS).to(ACC)
    _l2_write(out_ptr, s_ptr, g_ptr, xn_ptr, row * N + cols, ok, row, alpha, inv_g, eps, d_norm,
              lo_val, lo_ptr, lo_inner, lo_period, hi_val, hi_ptr, hi_inner, hi_period,
              LO_MODE, HI_MODE, DELTA, ACC)


@triton.jit
def _linf_init_kernel(
    out_ptr, xn_ptr, seed_ptr, total, N,
    e_val, e_ptr, e_inner, e_period, lo_val, lo_ptr, lo_inner, lo_period,
    hi_val, hi_ptr, hi_inner, hi_period,
    E_MODE: tl.constexpr, LO_MODE: tl.constexpr, HI_MODE: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < total
    row = offs // N
    eps = _budget(offs, ok, row, e_val, e_ptr, e_inner, e_period, E_MODE).to(ACC)
    lo = _budget(offs, ok, row, lo_val, lo_ptr, lo_inner, lo_period, LO_MODE).to(ACC)
    hi = _budget(offs, ok, row, hi_val, hi_ptr, hi_inner, hi_period, HI_MODE).to(ACC)
    xn = tl.load(xn_ptr + offs, mask=ok, other=0.0).to(ACC)
    u = tl.rand(tl.load(seed_ptr), offs).to(ACC)
    tl.store(out_ptr + offs, _clamp(xn + (2.0 * u - 1.0) * eps, lo, hi)
             .to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _l2_init_sq_kernel(seed_ptr, partial_ptr, N, chunks, CHUNK: tl.constexpr):
    """partial[row, chunk] = Σ n² (float64) of the Gaussian direction over one chunk."""
    row = (tl.program_id(0) // chunks).to(tl.int64)
    chunk = tl.program_id(0) % chunks
    cols = chunk * CHUNK + tl.arange(0, CHUNK)
    ok = cols < N
    n = tl.where(ok, tl.randn(tl.load(seed_ptr), row * N + cols).to(tl.float64), 0.0)
    tl.store(partial_ptr + row * chunks + chunk, tl.sum(n * n, axis=0))


@triton.jit
def _l2_init_write_kernel(
    out_ptr, xn_ptr, seed_ptr, n_sq_ptr, B, N, chunks,
    e_val, e_ptr, e_inner, e_period, lo_val, lo_ptr, lo_inner, lo_period,
    hi_val, hi_ptr, hi_inner, hi_period,
    E_MODE: tl.constexpr, LO_MODE: tl.constexpr, HI_MODE: tl.constexpr,
    ACC: tl.constexpr, CHUNK: tl.constexpr,
):
    row = (tl.program_id(0) // chunks).to(tl.int64)
    cols = (tl.program_id(0) % chunks) * CHUNK + tl.arange(0, CHUNK)
    ok = cols < N
    offs = row * N + cols
    seed = tl.load(seed_ptr)
    n = tl.randn(seed, offs).to(ACC)
    eps = _scalar_budget(row, N, e_val, e_ptr, e_inner, e_period, E_MODE).to(ACC)
    radius = tl.rand(seed, B.to(tl.int64) * N + row).to(ACC) * eps
    scale = radius * _inverse_norm(tl.load(n_sq_ptr + row)).to(ACC)
    lo = _budget(offs, ok, row, lo_val, lo_ptr, lo_inner, lo_period, LO_MODE).to(ACC)
    hi = _budget(offs, ok, row, hi_val, hi_ptr, hi_inner, hi_period, HI_MODE).to(ACC)
    x = tl.load(xn_ptr + offs, mask=ok, other=0.0).to(ACC) + n * scale
    tl.store(out_ptr + offs, _clamp(x, lo, hi).to(out_ptr.dtype.element_ty), mask=ok)


def budget_pattern(value: torch.Tensor, shape: torch.Size) -> Pattern:
    """(mode, scalar, values, inner, period) of a budget (heat_fast._step_args) for x's shape."""
    if value.dim() == 0 and value.device.type == "cpu":
        return 0, float(value), value, 1, 1
    full = value.expand(shape)
    varying = [d for d, (size, stride) in enumerate(zip(shape, full.stride()))
               if size > 1 and stride != 0]
    if not varying:
        return 2, 0.0, full.reshape(-1)[:1].contiguous(), 1, 1
    first, last = varying[0], varying[-1]
    if first == last == 0:
        return 1, 0.0, full[(slice(None),) + (0,) * (len(shape) - 1)].contiguous(), 1, 1
    if all(shape[d] == 1 or full.stride(d) != 0 for d in range(first, last + 1)):
        index = tuple(slice(None) if first <= d <= last else 0 for d in range(len(shape)))
        values = full[index].contiguous().reshape(-1)
        return 2, 0.0, values, math.prod(shape[last + 1:]), values.numel()
    values = full.contiguous().reshape(-1)
    return 2, 0.0, values, 1, values.numel()


def _args(pattern: Pattern):
    mode, value, values, inner, period = pattern
    return (value, values, inner, period), mode


def _rows(t: torch.Tensor):
    return t.shape[0], t.numel() // t.shape[0]


def pgd_step_(out: torch.Tensor, start: torch.Tensor, grad: torch.Tensor, x_nat: torch.Tensor,
              eps: torch.Tensor, alpha: torch.Tensor, clip_lo: torch.Tensor,
              clip_hi: torch.Tensor, norm: str, delta: bool) -> None:
    """Kernel contract of heat_fast.ops.pgd: the step of ``start`` written into ``out``."""
    if out.numel() == 0:
        return
    batch, n = _rows(out)
    acc = tl_dtype(acc_dtype(start, grad, x_nat))
    (e, e_mode), (a, a_mode), (lo, lo_mode), (hi, hi_mode) = (
        _args(budget_pattern(b, out.shape)) for b in (eps, alpha, clip_lo, clip_hi))
    budgets = (*e, *a, *lo, *hi)
    modes = dict(E_MODE=e_mode, A_MODE=a_mode, LO_MODE=lo_mode, HI_MODE=hi_mode,
                 DELTA=bool(delta), ACC=acc)
    with on_device(out):
        if norm == "linf":
            total = batch * n
            _linf_step_kernel[(triton.cdiv(total, ELEMENT_BLOCK),)](
                out, start, grad, x_nat, total, n, *budgets, BLOCK=ELEMENT_BLOCK, **modes)
        elif n <= SINGLE_PROGRAM_MAX:
            _l2_step_single_kernel[(batch,)](
                out, start, grad, x_nat, n, *budgets, BLOCK=triton.next_power_of_2(n), **modes)
        else:
            chunks = triton.cdiv(n, CHUNK)
            grid = (batch * chunks,)
            g_sq = torch.empty((batch, chunks), dtype=torch.float64, device=out.device)
            _l2_grad_sq_kernel[grid](grad, g_sq, n, chunks, CHUNK=CHUNK)
            g_sq = g_sq.sum(dim=1)
            d_sq = torch.empty((batch, chunks), dtype=torch.float64, device=out.device)
            _l2_delta_sq_kernel[grid](start, grad, x_nat, g_sq, d_sq, n, chunks, *a,
                                      A_MODE=a_mode, DELTA=bool(delta), ACC=acc, CHUNK=CHUNK)
            _l2_write_kernel[grid](out, start, grad, x_nat, g_sq, d_sq.sum(dim=1), n, chunks,
                                   *budgets, CHUNK=CHUNK, **modes)


def random_init_(out: torch.Tensor, x_nat: torch.Tensor, eps: torch.Tensor,
                 clip_lo: torch.Tensor, clip_hi: torch.Tensor, seed: torch.Tensor,
                 norm: str) -> None:
    """Kernel contract of heat_fast.ops.pgd: a random start drawn from ``seed`` into ``out``."""
    if out.numel() == 0:
        return
    batch, n = _rows(out)
    acc = tl_dtype(acc_dtype(x_nat))
    (e, e_mode), (lo, lo_mode), (hi, hi_mode) = (
        _args(budget_pattern(b, out.shape)) for b in (eps, clip_lo, clip_hi))
    modes = dict(E_MODE=e_mode, LO_MODE=lo_mode, HI_MODE=hi_mode, ACC=acc)
    with on_device(out):
        if norm == "linf":
            total = batch * n
            _linf_init_kernel[(triton.cdiv(total, ELEMENT_BLOCK),)](
                out, x_nat, seed, total, n, *e, *lo, *hi, BLOCK=ELEMENT_BLOCK, **modes)
            return
        chunks = triton.cdiv(n, CHUNK)
        n_sq = torch.empty((batch, chunks), dtype=torch.float64, device=out.device)
        _l2_init_sq_kernel[(batch * chunks,)](seed, n_sq, n, chunks, CHUNK=CHUNK)
        _l2_init_write_kernel[(batch * chunks,)](
            out, x_nat, seed, n_sq.sum(dim=1), batch, n, chunks, *e, *lo, *hi, CHUNK=CHUNK,
            **modes)
