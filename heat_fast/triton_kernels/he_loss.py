"""Triton kernels of the fused HE cross-entropy (forward and backward).

Two launches forward, two backward; every grid is sized to occupy the GPU
(:func:`heat_fast.triton_kernels.common.target_programs`, 132 SMs on an H100/H200).

Forward
1. ``_cos_partials_kernel``: one program per (row block, class block, split of D). It forms
   one BLOCK_M×BLOCK_N tile of the raw dots x·Wᵀ over its share of D with ``tl.dot`` and, from
   the same tiles, the partial squared norms Σx² (programs of class block 0) and ΣW² (programs
   of row block 0). 16-bit tiles go to the tensor cores as loaded (their products are exact in
   float32 and the accumulation is float32); float32 and float64 tiles use exact ``ieee`` dots.
   D is split until the grid holds a program per SM (partials summed in a fixed order, so the
   result is deterministic):
     CIFAR head B128 D640 C10: 16×16 tiles, 8 × 1 tile, D in 20 splits of 32 → 160 programs;
     ImageNet head B256 D2048 C1000 in bf16: 64×64 tiles, 4 × 16 tiles, 4 splits → 256 programs.
   Without splitting, the CIFAR head would be 8 programs and the ImageNet head 64.
2. ``_ce_rows_kernel``: one program per row (128 and 256 programs for the two heads). It sums
   the partials, forms cos = dot/(‖x‖‖W_c‖) and z = s(cos − m·1[c = y]) chunk by chunk, and
   writes the loss and dL/dcos in place of the dots. The loss is log1p(Σ_{j≠y} exp(z_j − z_y))
   and the true-class gradient −Σ_{j≠y} p_j, so neither cancels when p_y → 1. On the GPU it
   asserts 0 ≤ y < C on the device (no extra launch, no host synchronisation).

Backward
3. ``_grad_products_kernel``: one grid over the tiles of both products,
   dL/dx̃·‖x‖-free part  G_x = diag(g)·(dL/dcos ⊘ ‖W‖)·W   (B×D) and
   dL/dW̃                 G_w = (dL/dcos ⊙ (g ⊘ ‖x‖))ᵀ·x     (C×D), g = dloss/dloss_rows,
   in float32. A 16-bit operand is multiplied on the tensor cores with ``tf32x3`` (three TF32
   products, about 2⁻²² relative error, far below the 16-bit rounding of the gradient it
   feeds); float32 and float64 use ``ieee``. CIFAR head: 16×32 tiles, 160 + 20 programs;
   ImageNet head: 64×64 tiles, 128 + 512 programs.
4. ``_normalize_rows_kernel``: one program per row of both gradients (B + C programs) applies
   the normalization backward (I − x̂x̂ᵀ)/‖x‖ and stores in the input's dtype.

Under the Triton interpreter every tile is upcast to the math dtype right after load and every
dot is ``ieee`` (the interpreter mishandles bf16 arithmetic), with grids of one tile plan per
call (see ``common.target_programs``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import triton
import triton.language as tl

from heat_fast.triton_kernels import common
from heat_fast.triton_kernels.common import SIXTEEN_BIT, acc_dtype, on_device, tl_dtype

NORM_EPS = tl.constexpr(1e-12)
# Above this gap z_max − z_y the log1p form would overflow; use lse − z_y directly.
LOG1P_LIMIT = tl.constexpr(20.0)
ROW_BLOCK_C = 256  # classes per chunk of the row kernel (at most; 512 spills on sm_90 with D split)
NORM_BLOCK_D = 256  # columns per chunk of the normalization kernel (at most)


@triton.jit
def _log1p(u):
    """log(1 + u) accurate for small u without libdevice (which the interpreter lacks)."""
    one_plus = 1.0 + u
    exact = one_plus == 1.0
    return tl.where(exact, u, tl.log(one_plus) * (u / tl.where(exact, 1.0, one_plus - 1.0)))


@triton.jit
def _cos_partials_kernel(
    x_ptr, w_ptr, dots_ptr, xsq_ptr, wsq_ptr, B, C, D, k_per_split, blocks_m, blocks_n,
    ACC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dots[split] = x·Wᵀ over one split of D; xsq[split] = Σx², wsq[split] = ΣW² over it."""
    pid = tl.program_id(0)
    pid_m = pid % blocks_m
    pid_n = (pid // blocks_m) % blocks_n
    split = pid // (blocks_m * blocks_n)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cls = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < B
    cls_ok = cls < C
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * D
    w_rows = w_ptr + cls.to(tl.int64)[:, None] * D
    dots = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    xsq = tl.zeros((BLOCK_M,), dtype=ACC)
    wsq = tl.zeros((BLOCK_N,), dtype=ACC)
    d_start = split * k_per_split
    for d0 in range(d_start, tl.minimum(d_start + k_per_split, D), BLOCK_K):
        dd = d0 + tl.arange(0, BLOCK_K)
        d_ok = dd < D
        x = tl.load(x_rows + dd[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        w = tl.load(w_rows + dd[None, :], mask=cls_ok[:, None] & d_ok[None, :], other=0.0)
        x_acc = x.to(ACC)
        w_acc = w.to(ACC)
        if UPCAST:
            dots = tl.dot(x_acc, tl.trans(w_acc), dots, input_precision="ieee", out_dtype=ACC)
        else:
            dots = tl.dot(x, tl.trans(w), dots, out_dtype=ACC)
        xsq += tl.sum(x_acc * x_acc, axis=1)
        wsq += tl.sum(w_acc * w_acc, axis=1)
    split64 = split.to(tl.int64)
    out = dots_ptr + split64 * B * C + rows.to(tl.int64)[:, None] * C + cls[None, :]
    tl.store(out, dots, mask=row_ok[:, None] & cls_ok[None, :])
    if pid_n == 0:
        tl.store(xsq_ptr + split64 * B + rows, xsq, mask=row_ok)
    if pid_m == 0:
        tl.store(wsq_ptr + split64 * C + cls, wsq, mask=cls_ok)


@triton.jit(debug=True)
def _ce_rows_kernel(
    dots_ptr, splits, xsq_ptr, wsq_ptr, y_ptr, loss_ptr, gcos_ptr, nx_ptr, nw_ptr, B, C,
    scale: tl.float64, margin: tl.float64, smoothing: tl.float64,
    FEATURE_NORM: tl.constexpr, WEIGHT_NORM: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Loss and dL/dcos of one row from the partial dots and squared norms (module docstring).

    ``gcos`` may be ``dots`` itself (one split): each element is read before it is written.
    With both normalizations off and one split, ``dots`` may be the cosines themselves.
    """
    row = tl.program_id(0).to(tl.int64)
    y = tl.load(y_ptr + row)
    tl.device_assert((y >= 0) & (y < C), "heat_fast: target label outside [0, C)")
    s = tl.cast(scale, ACC)
    m = tl.cast(margin, ACC)
    eps = tl.cast(smoothing, ACC)
    lanes = tl.arange(0, BLOCK_C)

    if FEATURE_NORM:
        xsq = tl.load(xsq_ptr + row)
        for k in range(1, splits):
            xsq += tl.load(xsq_ptr + k * B + row)
        nx = tl.sqrt(xsq)
    else:
        nx = tl.full((), 1.0, ACC)
    inv_nx = 1.0 / tl.maximum(nx, NORM_EPS)
    tl.store(nx_ptr + row, nx)

    z_max = tl.full((BLOCK_C,), float("-inf"), dtype=ACC)
    z_true = tl.zeros((BLOCK_C,), dtype=ACC)
    z_total = tl.zeros((BLOCK_C,), dtype=ACC)
    row_z = gcos_ptr + row * C
    for c0 in range(0, C, BLOCK_C):
        cls = c0 + lanes
        ok = cls < C
        dot = tl.zeros((BLOCK_C,), dtype=ACC)
        for k in range(0, splits):
            dot += tl.load(dots_ptr + (k * B + row) * C + cls, mask=ok, other=0.0).to(ACC)
        if WEIGHT_NORM:
            wsq = tl.zeros((BLOCK_C,), dtype=ACC)
            for k in range(0, splits):
                wsq += tl.load(wsq_ptr + k * C + cls, mask=ok, other=0.0)
            nw = tl.sqrt(wsq)
        else:
            nw = tl.full((BLOCK_C,), 1.0, ACC)
        if row == 0:
            tl.store(nw_ptr + cls, nw, mask=ok)
        is_true = cls == y
        z = s * (dot * inv_nx / tl.maximum(nw, NORM_EPS) - tl.where(is_true, m, 0.0))
        z = tl.where(ok, z, float("-inf"))
        tl.store(row_z + cls, z, mask=ok)
        z_max = tl.maximum(z_max, z)
        z_true += tl.where(is_true, z, 0.0)
        z_total += tl.where(ok, z, 0.0)
    top = tl.max(z_max, axis=0)
    zy = tl.sum(z_true, axis=0)

    other = tl.zeros((BLOCK_C,), dtype=ACC)  # Σ_{j≠y} exp(z_j − top)
    for c0 in range(0, C, BLOCK_C):
        cls = c0 + lanes
        z = tl.load(row_z + cls, mask=cls < C, other=float("-inf"))
        other += tl.where(cls == y, 0.0, tl.exp(z - top))
    rest = tl.sum(other, axis=0)
    total = rest + tl.exp(zy - top)
    gap = top - zy
    ce = tl.where(gap <= LOG1P_LIMIT, _log1p(rest * tl.exp(tl.minimum(gap, LOG1P_LIMIT))),
                  gap + tl.log(total))
    tl.store(loss_ptr + row, ce + eps * (zy - tl.sum(z_total, axis=0) / C))

    inv_total = 1.0 / total
    true_grad = -rest * inv_total + eps * (1.0 - 1.0 / C)
    for c0 in range(0, C, BLOCK_C):
        cls = c0 + lanes
        ok = cls < C
        z = tl.load(row_z + cls, mask=ok, other=float("-inf"))
        p = tl.exp(z - top) * inv_total - eps / C
        tl.store(row_z + cls, s * tl.where(cls == y, true_grad, p), mask=ok)


@triton.jit
def _scaled_product_tile(
    a_ptr, stride_am, stride_ak, k_norm_ptr, k_mult_ptr, m_mult_ptr, b_ptr, out_ptr,
    M, K, N, tile, ACC: tl.constexpr, PRECISION: tl.constexpr,
    HAS_K_MULT: tl.constexpr, HAS_M_MULT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One tile of out = diag(m_mult)·(A ⊙ k_scale[None, :])·Bmat with
    k_scale = k_mult / max(k_norm, eps); A is M×K (strided), Bmat K×N and out M×N contiguous."""
    blocks_n = tl.cdiv(N, BLOCK_N)
    rows = (tile // blocks_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (tile % blocks_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    a_rows = a_ptr + rows.to(tl.int64)[:, None] * stride_am
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(a_rows + ks.to(tl.int64)[None, :] * stride_ak,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)
        k_scale = 1.0 / tl.maximum(tl.load(k_norm_ptr + ks, mask=k_ok, other=1.0).to(ACC),
                                   NORM_EPS)
        if HAS_K_MULT:
            k_scale *= tl.load(k_mult_ptr + ks, mask=k_ok, other=0.0).to(ACC)
        b = tl.load(b_ptr + ks.to(tl.int64)[:, None] * N + cols[None, :],
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0).to(ACC)
        acc = tl.dot(a * k_scale[None, :], b, acc, input_precision=PRECISION, out_dtype=ACC)
    if HAS_M_MULT:
        acc *= tl.load(m_mult_ptr + rows, mask=row_ok, other=0.0).to(ACC)[:, None]
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], acc,
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _grad_products_kernel(
    gcos_ptr, grows_ptr, nx_ptr, nw_ptr, x_ptr, w_ptr, gx_ptr, gw_ptr, B, C, D, tiles_x,
    ACC: tl.constexpr, PRECISION_X: tl.constexpr, PRECISION_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Tiles [0, tiles_x) of G_x = diag(g)·(dL/dcos ⊘ ‖W‖)·W, the rest of
    G_w = (dL/dcos ⊙ (g ⊘ ‖x‖))ᵀ·x (module docstring)."""
    pid = tl.program_id(0)
    if pid < tiles_x:
        _scaled_product_tile(gcos_ptr, C, 1, nw_ptr, nw_ptr, grows_ptr, w_ptr, gx_ptr,
                             B, C, D, pid, ACC, PRECISION_X, False, True,
                             BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        _scaled_product_tile(gcos_ptr, 1, C, nx_ptr, grows_ptr, grows_ptr, x_ptr, gw_ptr,
                             C, B, D, pid - tiles_x, ACC, PRECISION_W, True, False,
                             BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def _normalize_row(g_ptr, x_ptr, norm_ptr, out_ptr, row, D, NORMALIZE: tl.constexpr,
                   ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    """out = (g − x̂(x̂·g))/‖x‖ for one row (g/eps where ‖x‖ ≤ eps), or g; in out's dtype."""
    row = row.to(tl.int64)
    g_row = g_ptr + row * D
    x_row = x_ptr + row * D
    out_row = out_ptr + row * D
    cols = tl.arange(0, BLOCK_D)
    norm = tl.load(norm_ptr + row).to(ACC)
    inv = 1.0 / tl.maximum(norm, NORM_EPS)
    radial = tl.zeros((BLOCK_D,), dtype=ACC)
    if NORMALIZE:
        for d0 in range(0, D, BLOCK_D):
            ok = d0 + cols < D
            g = tl.load(g_row + d0 + cols, mask=ok, other=0.0)
            x = tl.load(x_row + d0 + cols, mask=ok, other=0.0).to(ACC)
            radial += x * g
    along = tl.where(norm > NORM_EPS, tl.sum(radial, axis=0) * inv, 0.0)
    exact_zero = (D == 1) & (norm > NORM_EPS)  # x̂ = ±1: the projection removes all of g
    for d0 in range(0, D, BLOCK_D):
        ok = d0 + cols < D
        g = tl.load(g_row + d0 + cols, mask=ok, other=0.0)
        if NORMALIZE:
            x = tl.load(x_row + d0 + cols, mask=ok, other=0.0).to(ACC)
            g = tl.where(exact_zero, 0.0, (g - x * inv * along) * inv)
        tl.store(out_row + d0 + cols, g.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _normalize_rows_kernel(
    gx_ptr, x_ptr, nx_ptr, dx_ptr, gw_ptr, w_ptr, nw_ptr, dw_ptr, B, D,
    FEATURE_NORM: tl.constexpr, WEIGHT_NORM: tl.constexpr, ACC: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Rows [0, B) turn G_x into d_features, the rest turn G_w into d_weight."""
    pid = tl.program_id(0)
    if pid < B:
        _normalize_row(gx_ptr, x_ptr, nx_ptr, dx_ptr, pid, D, FEATURE_NORM, ACC, BLOCK_D)
    else:
        _normalize_row(gw_ptr, w_ptr, nw_ptr, dw_ptr, pid - B, D, WEIGHT_NORM, ACC, BLOCK_D)


@dataclass(frozen=True)
class TilePlan:
    """Tile sizes and grid of one GEMM-shaped launch."""

    block_m: int
    block_n: int
    block_k: int
    programs: int
    splits: int = 1
    k_per_split: int = 0


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _tile_options(dtype: torch.dtype, sixteen_bit: bool) -> Sequence[Tuple[int, int]]:
    """(BLOCK_M, BLOCK_K) candidates, largest first; sized so no tile spills on sm_90."""
    if dtype == torch.float64:
        return ((32, 16), (16, 16))
    if sixteen_bit:
        return ((64, 64), (32, 64), (16, 64), (16, 32))
    return ((32, 32), (16, 32))


def forward_plan(batch: int, classes: int, dim: int, dtype: torch.dtype, sixteen_bit: bool,
                 target: int) -> TilePlan:
    """Tiles of ``_cos_partials_kernel``: the largest tiles whose grid, with D split into at
    most cdiv(D, BLOCK_K) parts, reaches ``target`` programs (else the smallest tiles of the
    most programs)."""
    block_n = max(16, min(64 if sixteen_bit else 32, triton.next_power_of_2(classes)))
    best = None
    for block_m, block_k in _tile_options(dtype, sixteen_bit):
        tiles = _ceil(batch, block_m) * _ceil(classes, block_n)
        k_tiles = _ceil(dim, block_k)
        per_split = max(1, k_tiles // max(1, _ceil(target, tiles)))
        splits = _ceil(k_tiles, per_split)
        plan = TilePlan(block_m, block_n, block_k, tiles * splits, splits, per_split * block_k)
        if best is None or plan.programs >= best.programs:
            best = plan
        if plan.programs >= target:
            return plan
    return best


def backward_plan(batch: int, classes: int, dim: int, dtype: torch.dtype, sixteen_bit: bool,
                  target: int) -> TilePlan:
    """Tiles of ``_grad_products_kernel`` (BLOCK_N over D): the largest reaching ``target``."""
    best = None
    for block_m, block_n in _tile_options(dtype, sixteen_bit):
        programs = (_ceil(batch, block_m) + _ceil(classes, block_m)) * _ceil(dim, block_n)
        plan = TilePlan(block_m, block_n, 16 if dtype == torch.float64 else 32, programs)
        if best is None or plan.programs >= best.programs:
            best = plan
        if programs >= target:
            return plan
    return best


def _feeds_tensor_cores(*tensors: torch.Tensor) -> bool:
    """16-bit tiles of one dtype go to tl.dot as loaded (not under the interpreter)."""
    first = tensors[0].dtype
    return (first in SIXTEEN_BIT and all(t.dtype == first for t in tensors)
            and not common.interpreting())


def _precision(output_dtype: torch.dtype) -> str:
    """tf32x3 where the product feeds a 16-bit gradient, exact ieee dots otherwise."""
    return "tf32x3" if output_dtype in SIXTEEN_BIT and not common.interpreting() else "ieee"


def he_ce_forward(
    features: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, scale: float,
    margin: float, label_smoothing: float, feature_norm: bool, weight_norm: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel contract of heat_fast.ops.he_loss: (loss_rows, grad_cos, ‖x‖, ‖W_c‖)."""
    batch, dim = features.shape
    classes = weight.shape[0]
    dtype = acc_dtype(features)
    sixteen_bit = _feeds_tensor_cores(features, weight)
    plan = forward_plan(batch, classes, dim, dtype, sixteen_bit,
                        common.target_programs(features.device))
    new = features.new_empty
    with on_device(features):
        grad_cos = new((batch, classes), dtype=dtype)
        dots = grad_cos if plan.splits == 1 else new((plan.splits, batch, classes), dtype=dtype)
        feature_sq = new((plan.splits, batch), dtype=dtype)
        weight_sq = new((plan.splits, classes), dtype=dtype)
        _cos_partials_kernel[(plan.programs,)](
            features, weight, dots, feature_sq, weight_sq, batch, classes, dim,
            plan.k_per_split, _ceil(batch, plan.block_m), _ceil(classes, plan.block_n),
            ACC=tl_dtype(dtype), UPCAST=not sixteen_bit, BLOCK_M=plan.block_m,
            BLOCK_N=plan.block_n, BLOCK_K=plan.block_k,
        )
        loss = new((batch,), dtype=dtype)
        feature_norms = new((batch,), dtype=dtype)
        weight_norms = new((classes,), dtype=dtype)
        _ce_rows_kernel[(batch,)](
            dots, plan.splits, feature_sq, weight_sq, target, loss, grad_cos, feature_norms,
            weight_norms, batch, classes, float(scale), float(margin), float(label_smoothing),
            FEATURE_NORM=bool(feature_norm), WEIGHT_NORM=bool(weight_norm), ACC=tl_dtype(dtype),
            BLOCK_C=max(16, min(ROW_BLOCK_C, triton.next_power_of_2(classes))),
        )
    return loss, grad_cos, feature_norms, weight_norms


def he_ce_backward(
    grad_rows: torch.Tensor, features: torch.Tensor, weight: torch.Tensor,
    grad_cos: torch.Tensor, feature_norms: torch.Tensor, weight_norms: torch.Tensor,
    feature_norm: bool, weight_norm: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel contract of heat_fast.ops.he_loss: (d_features, d_weight)."""
    batch, classes = grad_cos.shape
    dim = features.shape[1]
    dtype = acc_dtype(features)
    precision_x, precision_w = _precision(features.dtype), _precision(weight.dtype)
    plan = backward_plan(batch, classes, dim, dtype, "tf32x3" in (precision_x, precision_w),
                         common.target_programs(features.device))
    with on_device(features):
        g_x = torch.empty((batch, dim), dtype=dtype, device=features.device)
        g_w = torch.empty((classes, dim), dtype=dtype, device=features.device)
        _grad_products_kernel[(plan.programs,)](
            grad_cos, grad_rows, feature_norms, weight_norms, features, weight, g_x, g_w,
            batch, classes, dim, _ceil(batch, plan.block_m) * _ceil(dim, plan.block_n),
            ACC=tl_dtype(dtype), PRECISION_X=precision_x, PRECISION_W=precision_w,
            BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_K=plan.block_k,
        )
        d_features = torch.empty_like(features)
        d_weight = torch.empty_like(weight)
        _normalize_rows_kernel[(batch + classes,)](
            g_x, features, feature_norms, d_features, g_w, weight, weight_norms, d_weight,
            batch, dim, FEATURE_NORM=bool(feature_norm), WEIGHT_NORM=bool(weight_norm),
            ACC=tl_dtype(dtype), BLOCK_D=max(16, min(NORM_BLOCK_D, triton.next_power_of_2(dim))),
        )
    return d_features, d_weight


def cos_ce_forward(cos: torch.Tensor, target: torch.Tensor, scale: float, margin: float,
                   label_smoothing: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel contract of heat_fast.ops.cos_loss: (loss_rows, grad_cos) from cosines (B, C)."""
    batch, classes = cos.shape
    dtype = acc_dtype(cos)
    with on_device(cos):
        loss = cos.new_empty((batch,), dtype=dtype)
        grad_cos = cos.new_empty((batch, classes), dtype=dtype)
        ones = cos.new_empty((batch + classes,), dtype=dtype)  # the norms it writes, all 1
        _ce_rows_kernel[(batch,)](
            cos, 1, ones, ones, target, loss, grad_cos, ones, ones[batch:], batch, classes,
            float(scale), float(margin), float(label_smoothing), FEATURE_NORM=False,
            WEIGHT_NORM=False, ACC=tl_dtype(dtype),
            BLOCK_C=max(16, min(ROW_BLOCK_C, triton.next_power_of_2(classes))),
        )
    return loss, grad_cos
