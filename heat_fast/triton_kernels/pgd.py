"""Triton kernels of the batched projected gradient step and the random start.

Tensors are viewed as (B, N) rows, one row per sample; offsets are 64-bit. L∞ is one
elementwise pass (3 reads + 1 write). L2 needs two per-sample reductions (‖g‖, then ‖δ‖): a
sample of up to ``SINGLE_PROGRAM_MAX`` elements is handled by one program that holds it in
registers; larger samples use a split reduction (per-chunk partial sums, summed in a fixed
order, so results are deterministic) and a final write pass, each over a one-dimensional grid
of B × chunks programs (no grid dimension near its 65,535 limit). Writes happen only in the
last pass, each element after its own reads, so ``out`` may alias ``x_adv``. Math in float32 (float64 for
float64 inputs). The random start draws Philox numbers from a seed read on the device.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from heat_fast.triton_kernels.common import acc_dtype, on_device, tl_dtype

NORM_EPS = tl.constexpr(1e-12)
ELEMENT_BLOCK = 1024
CHUNK = 1024
SINGLE_PROGRAM_MAX = 8192


@triton.jit
def _box(x, clip_min, clip_max):
    return tl.minimum(tl.maximum(x, clip_min), clip_max)


@triton.jit
def _linf_step_kernel(out_ptr, xa_ptr, g_ptr, xn_ptr, eps_ptr, alpha_ptr, total, N,
                      clip_min, clip_max, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < total
    sample = offs // N
    eps = tl.load(eps_ptr + sample, mask=ok, other=0.0).to(ACC)
    alpha = tl.load(alpha_ptr + sample, mask=ok, other=0.0).to(ACC)
    xa = tl.load(xa_ptr + offs, mask=ok, other=0.0).to(ACC)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(ACC)
    xn = tl.load(xn_ptr + offs, mask=ok, other=0.0).to(ACC)
    step = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))
    x = tl.minimum(tl.maximum(xa + alpha * step, xn - eps), xn + eps)
    tl.store(out_ptr + offs, _box(x, clip_min, clip_max).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _finite_or_zero(g):
    return tl.where(tl.abs(g) < float("inf"), g, 0.0)


@triton.jit
def _l2_step_single_kernel(out_ptr, xa_ptr, g_ptr, xn_ptr, eps_ptr, alpha_ptr, N,
                           clip_min, clip_max, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    base = row * N
    g = _finite_or_zero(tl.load(g_ptr + base + cols, mask=ok, other=0.0).to(ACC))
    xa = tl.load(xa_ptr + base + cols, mask=ok, other=0.0).to(ACC)
    xn = tl.load(xn_ptr + base + cols, mask=ok, other=0.0).to(ACC)
    eps = tl.load(eps_ptr + row).to(ACC)
    alpha = tl.load(alpha_ptr + row).to(ACC)
    g_norm = tl.maximum(tl.sqrt(tl.sum(g * g, axis=0)), NORM_EPS)
    delta = xa + alpha * (g / g_norm) - xn
    d_norm = tl.maximum(tl.sqrt(tl.sum(delta * delta, axis=0)), NORM_EPS)
    x = xn + delta * tl.minimum(eps / d_norm, 1.0)
    tl.store(out_ptr + base + cols, _box(x, clip_min, clip_max).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _l2_grad_sq_kernel(g_ptr, partial_ptr, N, chunks, ACC: tl.constexpr, CHUNK: tl.constexpr):
    """partial[row, chunk] = Σ g² over one chunk of one sample (non-finite g counts as 0)."""
    row = (tl.program_id(0) // chunks).to(tl.int64)
    chunk = tl.program_id(0) % chunks
    cols = chunk * CHUNK + tl.arange(0, CHUNK)
    ok = cols < N
    g = _finite_or_zero(tl.load(g_ptr + row * N + cols, mask=ok, other=0.0).to(ACC))
    tl.store(partial_ptr + row * chunks + chunk, tl.sum(g * g, axis=0))


@triton.jit
def _l2_delta_sq_kernel(xa_ptr, g_ptr, xn_ptr, alpha_ptr, g_sq_ptr, partial_ptr, N, chunks,
                        ACC: tl.constexpr, CHUNK: tl.constexpr):
    """partial[row, chunk] = Σ δ² over one chunk, δ = x_adv + α·g/‖g‖ − x_nat."""
    row = (tl.program_id(0) // chunks).to(tl.int64)
    chunk = tl.program_id(0) % chunks
    cols = chunk * CHUNK + tl.arange(0, CHUNK)
    ok = cols < N
    offs = row * N + cols
    g = _finite_or_zero(tl.load(g_ptr + offs, mask=ok, other=0.0).to(ACC))
    xa = tl.load(xa_ptr + offs, mask=ok, other=0.0).to(ACC)
    xn = tl.load(xn_ptr + offs, mask=ok, other=0.0).to(ACC)
    alpha = tl.load(alpha_ptr + row).to(ACC)
    g_norm = tl.maximum(tl.sqrt(tl.load(g_sq_ptr + row)), NORM_EPS)
    delta = tl.where(ok, xa + alpha * (g / g_norm) - xn, 0.0)
    tl.store(partial_ptr + row * chunks + chunk, tl.sum(delta * delta, axis=0))


@triton.jit
def _l2_write_kernel(out_ptr, xa_ptr, g_ptr, xn_ptr, eps_ptr, alpha_ptr, g_sq_ptr, d_sq_ptr,
                     N, chunks, clip_min, clip_max, ACC: tl.constexpr, CHUNK: tl.constexpr):
    row = (tl.program_id(0) // chunks).to(tl.int64)
    cols = (tl.program_id(0) % chunks) * CHUNK + tl.arange(0, CHUNK)
    ok = cols < N
    offs = row * N + cols
    g = _finite_or_zero(tl.load(g_ptr + offs, mask=ok, other=0.0).to(ACC))
    xa = tl.load(xa_ptr + offs, mask=ok, other=0.0).to(ACC)
    xn = tl.load(xn_ptr + offs, mask=ok, other=0.0).to(ACC)
    eps = tl.load(eps_ptr + row).to(ACC)
    alpha = tl.load(alpha_ptr + row).to(ACC)
    g_norm = tl.maximum(tl.sqrt(tl.load(g_sq_ptr + row)), NORM_EPS)
    d_norm = tl.maximum(tl.sqrt(tl.load(d_sq_ptr + row)), NORM_EPS)
    delta = xa + alpha * (g / g_norm) - xn
    x = xn + delta * tl.minimum(eps / d_norm, 1.0)
    tl.store(out_ptr + offs, _box(x, clip_min, clip_max).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _linf_init_kernel(out_ptr, xn_ptr, eps_ptr, seed_ptr, total, N, clip_min, clip_max,
                      ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < total
    eps = tl.load(eps_ptr + offs // N, mask=ok, other=0.0).to(ACC)
    xn = tl.load(xn_ptr + offs, mask=ok, other=0.0).to(ACC)
    u = tl.rand(tl.load(seed_ptr), offs).to(ACC)
    x = xn + (2.0 * u - 1.0) * eps
    tl.store(out_ptr + offs, _box(x, clip_min, clip_max).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _l2_init_sq_kernel(seed_ptr, partial_ptr, N, chunks, ACC: tl.constexpr, CHUNK: tl.constexpr):
    """partial[row, chunk] = Σ n² of the Gaussian direction over one chunk."""
    row = (tl.program_id(0) // chunks).to(tl.int64)
    chunk = tl.program_id(0) % chunks
    cols = chunk * CHUNK + tl.arange(0, CHUNK)
    ok = cols < N
    n = tl.where(ok, tl.randn(tl.load(seed_ptr), row * N + cols).to(ACC), 0.0)
    tl.store(partial_ptr + row * chunks + chunk, tl.sum(n * n, axis=0))


@triton.jit
def _l2_init_write_kernel(out_ptr, xn_ptr, eps_ptr, seed_ptr, n_sq_ptr, B, N, chunks, clip_min,
                          clip_max, ACC: tl.constexpr, CHUNK: tl.constexpr):
    row = (tl.program_id(0) // chunks).to(tl.int64)
    cols = (tl.program_id(0) % chunks) * CHUNK + tl.arange(0, CHUNK)
    ok = cols < N
    offs = row * N + cols
    seed = tl.load(seed_ptr)
    n = tl.randn(seed, offs).to(ACC)
    radius = tl.rand(seed, B.to(tl.int64) * N + row).to(ACC) * tl.load(eps_ptr + row).to(ACC)
    scale = radius / tl.maximum(tl.sqrt(tl.load(n_sq_ptr + row)), NORM_EPS)
    x = tl.load(xn_ptr + offs, mask=ok, other=0.0).to(ACC) + n * scale
    tl.store(out_ptr + offs, _box(x, clip_min, clip_max).to(out_ptr.dtype.element_ty), mask=ok)


def _rows(t: torch.Tensor):
    return t.shape[0], t.numel() // t.shape[0]


def _chunk_sums(kernel, batch: int, n: int, dtype: torch.dtype, device, *args) -> torch.Tensor:
    """Launch a per-(sample, chunk) partial-sum kernel and sum the chunks of each sample."""
    chunks = triton.cdiv(n, CHUNK)
    partial = torch.empty((batch, chunks), dtype=dtype, device=device)
    kernel[(batch * chunks,)](*args, partial, n, chunks, ACC=tl_dtype(dtype), CHUNK=CHUNK)
    return partial.sum(dim=1)


def pgd_step_(out: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, x_nat: torch.Tensor,
              eps: torch.Tensor, alpha: torch.Tensor, norm: str, clip_min: float,
              clip_max: float) -> None:
    """Kernel contract of heat_fast.ops.pgd: the projected step written into ``out``."""
    batch, n = _rows(x_adv)
    dtype = acc_dtype(x_adv, grad, x_nat)
    acc = tl_dtype(dtype)
    with on_device(out):
        if norm == "linf":
            total = batch * n
            _linf_step_kernel[(triton.cdiv(total, ELEMENT_BLOCK),)](
                out, x_adv, grad, x_nat, eps, alpha, total, n, clip_min, clip_max,
                ACC=acc, BLOCK=ELEMENT_BLOCK)
        elif n <= SINGLE_PROGRAM_MAX:
            _l2_step_single_kernel[(batch,)](
                out, x_adv, grad, x_nat, eps, alpha, n, clip_min, clip_max,
                ACC=acc, BLOCK=triton.next_power_of_2(n))
        else:
            g_sq = _chunk_sums(_l2_grad_sq_kernel, batch, n, dtype, x_adv.device, grad)
            d_sq = _chunk_sums(_l2_delta_sq_kernel, batch, n, dtype, x_adv.device,
                               x_adv, grad, x_nat, alpha, g_sq)
            chunks = triton.cdiv(n, CHUNK)
            _l2_write_kernel[(batch * chunks,)](
                out, x_adv, grad, x_nat, eps, alpha, g_sq, d_sq, n, chunks, clip_min, clip_max,
                ACC=acc, CHUNK=CHUNK)


def random_init_(out: torch.Tensor, x_nat: torch.Tensor, eps: torch.Tensor, seed: torch.Tensor,
                 norm: str, clip_min: float, clip_max: float) -> None:
    """Kernel contract of heat_fast.ops.pgd: a random start drawn from ``seed`` into ``out``."""
    batch, n = _rows(x_nat)
    dtype = acc_dtype(x_nat)
    with on_device(out):
        if norm == "linf":
            total = batch * n
            _linf_init_kernel[(triton.cdiv(total, ELEMENT_BLOCK),)](
                out, x_nat, eps, seed, total, n, clip_min, clip_max,
                ACC=tl_dtype(dtype), BLOCK=ELEMENT_BLOCK)
            return
        n_sq = _chunk_sums(_l2_init_sq_kernel, batch, n, dtype, x_nat.device, seed)
        chunks = triton.cdiv(n, CHUNK)
        _l2_init_write_kernel[(batch * chunks,)](
            out, x_nat, eps, seed, n_sq, batch, n, chunks, clip_min, clip_max,
            ACC=tl_dtype(dtype), CHUNK=CHUNK)
