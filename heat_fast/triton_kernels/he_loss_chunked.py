"""Triton kernels of the large-class HE cross-entropy (heat_fast.ops.he_loss_chunked contract).

Nothing of size B×C is ever allocated: the forward keeps per-row statistics only, the
backward one (B, chunk) block at a time.

Forward, three launches:
1. ``_row_norms_kernel``: ‖x_b‖ and ‖W_j‖, one program per NORM_ROWS rows of either.
2. ``_chunk_stats_kernel``: one program per (row block, split of the classes). Per tile of
   classes it forms the raw dots x·Wᵀ over all of D with ``tl.dot`` (16-bit tiles go to the
   tensor cores as loaded: exact products, float32 accumulation), the logits
   z = s·(cos − m·1[j = y]) and folds them into each row's running statistics: the largest
   logit, Σ e^{z − max} over the non-target classes (rescaled when the max grows), Σ z and the
   target's logit, stored per split. The grid reaches a program per SM (132 on an H100/H200):
   B256 D512 C131072 bf16: 64×64 tiles, 4 row blocks × 33 splits of 63 class tiles.
3. ``_chunk_loss_kernel``: one program per row merges its splits in order (deterministic) into
   the loss, lse and the target's dloss/dcos, as log1p(Σ_{j≠y} e^{z_j − z_y}) and
   s·(ε − ε/C − Σ_{j≠y} p_j) so that neither cancels when p_y → 1. On the GPU it asserts
   0 ≤ y < C on the device (no extra launch, no host synchronisation).

Backward, per chunk of classes (sized so the (B, chunk) and (chunk, D) float32 buffers hold
about CHUNK_VALUES values each; chunks run in order):
4. ``_chunk_grad_cos_kernel``: one program per (row block, class tile of the chunk) forms the
   dots again and writes dL/dcos of the chunk into the (B, chunk) block;
5. the unchunked backward's ``_grad_products_kernel`` on the block: G_x of the chunk (summed
   over the chunks in order) and G_w of the chunk's classes;
6. the unchunked backward's ``_normalize_rows_kernel`` on the chunk's weight rows, and after
   the last chunk on the feature rows.

Under the Triton interpreter every tile is upcast to the math dtype and every dot is ``ieee``
(as in heat_fast.triton_kernels.he_loss), with grids of one tile plan per call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import triton
import triton.language as tl

from heat_fast.triton_kernels import common
from heat_fast.triton_kernels.common import acc_dtype, on_device, tl_dtype
from heat_fast.triton_kernels.he_loss import (
    LOG1P_LIMIT, NORM_BLOCK_D, NORM_EPS, _ceil, _feeds_tensor_cores, _grad_products_kernel,
    _log1p, _normalize_rows_kernel, _precision, _tile_options, backward_plan,
)

# The backward's (B, chunk) block and the chunk's (chunk, D) weight gradient hold about this
# many values each (32 MiB of float32 each).
CHUNK_VALUES = 1 << 23
NORM_ROWS = 16  # rows per program of the norms kernel
LOWEST = tl.constexpr(-3.4028234663852886e38)  # the running max before any logit


@triton.jit
def _norm_rows(ptr, out_ptr, first, count, D, ENABLED: tl.constexpr, ACC: tl.constexpr,
               ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[r] = ‖row r‖₂ (1 when not ENABLED) for the rows [first, first + ROWS) below count."""
    rows = first + tl.arange(0, ROWS)
    row_ok = rows < count
    if ENABLED:
        cols = tl.arange(0, BLOCK_D)
        square = tl.zeros((ROWS, BLOCK_D), dtype=ACC)
        for d0 in range(0, D, BLOCK_D):
            ok = row_ok[:, None] & (d0 + cols < D)[None, :]
            v = tl.load(ptr + rows.to(tl.int64)[:, None] * D + d0 + cols[None, :], mask=ok,
                        other=0.0).to(ACC)
            square += v * v
        norms = tl.sqrt(tl.sum(square, axis=1))
    else:
        norms = tl.full((ROWS,), 1.0, ACC)
    tl.store(out_ptr + rows, norms, mask=row_ok)


@triton.jit
def _row_norms_kernel(x_ptr, w_ptr, nx_ptr, nw_ptr, B, C, D, blocks_x,
                      FEATURE_NORM: tl.constexpr, WEIGHT_NORM: tl.constexpr,
                      ACC: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Programs [0, blocks_x) write ‖x_b‖ of ROWS rows each, the others ‖W_j‖."""
    pid = tl.program_id(0)
    if pid < blocks_x:
        _norm_rows(x_ptr, nx_ptr, pid * ROWS, B, D, FEATURE_NORM, ACC, ROWS, BLOCK_D)
    else:
        _norm_rows(w_ptr, nw_ptr, (pid - blocks_x) * ROWS, C, D, WEIGHT_NORM, ACC, ROWS,
                   BLOCK_D)


@triton.jit
def _dot_tile(x_ptr, w_ptr, rows, cls, row_ok, cls_ok, D, ACC: tl.constexpr,
              UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr):
    """The BLOCK_M×BLOCK_N tile of raw dots x·Wᵀ over all of D."""
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * D
    w_rows = w_ptr + cls.to(tl.int64)[:, None] * D
    dots = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for d0 in range(0, D, BLOCK_K):
        dd = d0 + tl.arange(0, BLOCK_K)
        d_ok = dd < D
        x = tl.load(x_rows + dd[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        w = tl.load(w_rows + dd[None, :], mask=cls_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            dots = tl.dot(x.to(ACC), tl.trans(w.to(ACC)), dots, input_precision="ieee",
                          out_dtype=ACC)
        else:
            dots = tl.dot(x, tl.trans(w), dots, out_dtype=ACC)
    return dots


@triton.jit
def _cosines(dots, nx_ptr, nw_ptr, rows, cls, row_ok, cls_ok, ACC: tl.constexpr):
    """cos = dots / (max(‖x‖, eps)·max(‖W‖, eps)) of a tile, in the unchunked rounding order."""
    nx = tl.load(nx_ptr + rows, mask=row_ok, other=1.0).to(ACC)
    nw = tl.load(nw_ptr + cls, mask=cls_ok, other=1.0).to(ACC)
    return dots * (1.0 / tl.maximum(nx, NORM_EPS))[:, None] / tl.maximum(nw, NORM_EPS)[None, :]


@triton.jit
def _chunk_stats_kernel(
    x_ptr, w_ptr, y_ptr, nx_ptr, nw_ptr, stats_ptr, B, C, D, classes_per_split, blocks_m,
    scale: tl.float64, margin: tl.float64,
    ACC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Running statistics of one row block over one split of the classes (module docstring):
    stats[split, k, b] for k = max, Σ e^{z − max} (non-target), Σ z, target logit (0 when the
    target is in another split)."""
    pid = tl.program_id(0)
    pid_m = pid % blocks_m
    split = pid // blocks_m
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    y = tl.load(y_ptr + rows, mask=row_ok, other=-1)
    s = tl.cast(scale, ACC)
    m = tl.cast(margin, ACC)
    top = tl.full((BLOCK_M,), LOWEST, ACC)
    rest = tl.zeros((BLOCK_M,), dtype=ACC)
    total = tl.zeros((BLOCK_M,), dtype=ACC)
    z_y = tl.zeros((BLOCK_M,), dtype=ACC)
    c_start = split * classes_per_split
    for c0 in range(c_start, tl.minimum(c_start + classes_per_split, C), BLOCK_N):
        cls = c0 + tl.arange(0, BLOCK_N)
        cls_ok = cls < C
        dots = _dot_tile(x_ptr, w_ptr, rows, cls, row_ok, cls_ok, D, ACC, UPCAST,
                         BLOCK_M, BLOCK_N, BLOCK_K)
        cos = _cosines(dots, nx_ptr, nw_ptr, rows, cls, row_ok, cls_ok, ACC)
        is_y = cls[None, :] == y[:, None]
        z = tl.where(is_y, s * (cos - m), s * cos)
        z = tl.where(cls_ok[None, :], z, float("-inf"))
        new_top = tl.maximum(top, tl.max(z, axis=1))
        other = tl.where(is_y, 0.0, tl.exp(z - new_top[:, None]))
        rest = rest * tl.exp(top - new_top) + tl.sum(other, axis=1)
        top = new_top
        total += tl.sum(tl.where(cls_ok[None, :], z, 0.0), axis=1)
        z_y += tl.sum(tl.where(is_y, z, 0.0), axis=1)
    out = stats_ptr + split.to(tl.int64) * 4 * B + rows
    tl.store(out, top, mask=row_ok)
    tl.store(out + B, rest, mask=row_ok)
    tl.store(out + 2 * B, total, mask=row_ok)
    tl.store(out + 3 * B, z_y, mask=row_ok)


@triton.jit(debug=True)
def _chunk_loss_kernel(
    stats_ptr, splits, y_ptr, loss_ptr, lse_ptr, target_grad_ptr, B, C,
    scale: tl.float64, smoothing: tl.float64, ACC: tl.constexpr,
):
    """One row's splits merged in order into its loss, lse and dloss/dcos_y; on the GPU it
    asserts 0 ≤ y < C on the device."""
    row = tl.program_id(0).to(tl.int64)
    y = tl.load(y_ptr + row)
    tl.device_assert((y >= 0) & (y < C), "heat_fast: target label outside [0, C)")
    s = tl.cast(scale, ACC)
    eps = tl.cast(smoothing, ACC)
    top = tl.load(stats_ptr + row)
    for k in range(1, splits):
        top = tl.maximum(top, tl.load(stats_ptr + k * 4 * B + row))
    rest = tl.zeros((), dtype=ACC)
    total = tl.zeros((), dtype=ACC)
    z_y = tl.zeros((), dtype=ACC)
    for k in range(0, splits):
        base = stats_ptr + k * 4 * B + row
        rest += tl.load(base + B) * tl.exp(tl.load(base) - top)
        total += tl.load(base + 2 * B)
        z_y += tl.load(base + 3 * B)
    sum_exp = rest + tl.exp(z_y - top)
    gap = top - z_y
    ce = tl.where(gap <= LOG1P_LIMIT, _log1p(rest * tl.exp(tl.minimum(gap, LOG1P_LIMIT))),
                  gap + tl.log(sum_exp))
    tl.store(loss_ptr + row, ce + eps * (z_y - total / C))
    tl.store(lse_ptr + row, top + tl.log(sum_exp))
    tl.store(target_grad_ptr + row, s * (-rest / sum_exp + eps * (1.0 - 1.0 / C)))


@triton.jit
def _chunk_grad_cos_kernel(
    x_ptr, w_ptr, y_ptr, nx_ptr, nw_ptr, lse_ptr, target_grad_ptr, gcos_ptr, B, C, D,
    first, count, blocks_m, scale: tl.float64, smoothing: tl.float64,
    ACC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gcos[b, j] = dloss_b/dcos_b,first+j for the chunk's classes [first, first + count):
    s·(e^{z − lse} − ε/C) off the target, target_grad on it."""
    pid = tl.program_id(0)
    pid_m = pid % blocks_m
    pid_n = pid // blocks_m
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    local = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cls = first + local
    row_ok = rows < B
    cls_ok = local < count
    dots = _dot_tile(x_ptr, w_ptr, rows, cls, row_ok, cls_ok, D, ACC, UPCAST,
                     BLOCK_M, BLOCK_N, BLOCK_K)
    cos = _cosines(dots, nx_ptr, nw_ptr, rows, cls, row_ok, cls_ok, ACC)
    s = tl.cast(scale, ACC)
    off_target = tl.cast(smoothing, ACC) / C
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    y = tl.load(y_ptr + rows, mask=row_ok, other=-1)
    target_grad = tl.load(target_grad_ptr + rows, mask=row_ok, other=0.0)
    grad = s * (tl.exp(s * cos - lse[:, None]) - off_target)
    grad = tl.where(cls[None, :] == y[:, None], target_grad[:, None], grad)
    out = gcos_ptr + rows.to(tl.int64)[:, None] * count + local[None, :]
    tl.store(out, grad, mask=row_ok[:, None] & cls_ok[None, :])


@dataclass(frozen=True)
class StatsPlan:
    """Tiles and grid of ``_chunk_stats_kernel``."""

    block_m: int
    block_n: int
    block_k: int
    blocks_m: int
    splits: int
    classes_per_split: int

    @property
    def programs(self) -> int:
        return self.blocks_m * self.splits


def stats_plan(batch: int, classes: int, dtype: torch.dtype, sixteen_bit: bool,
               target: int) -> StatsPlan:
    """The largest tiles; the classes split until the grid reaches ``target`` programs."""
    block_m, block_k = _tile_options(dtype, sixteen_bit)[0]
    block_m = min(block_m, max(16, triton.next_power_of_2(batch)))
    block_n = 64 if sixteen_bit else (16 if dtype == torch.float64 else 32)
    blocks_m = _ceil(batch, block_m)
    class_tiles = _ceil(classes, block_n)
    splits = min(class_tiles, max(1, _ceil(target, blocks_m)))
    per_split = _ceil(class_tiles, splits) * block_n
    return StatsPlan(block_m, block_n, block_k, blocks_m, _ceil(classes, per_split), per_split)


def chunk_classes(batch: int, classes: int, dim: int, chunk: int) -> int:
    """Classes per backward chunk: ``chunk`` when given, else CHUNK_VALUES / max(B, D)."""
    if chunk > 0:
        return min(chunk, classes)
    return min(classes, max(64, CHUNK_VALUES // max(batch, dim)))


def he_ce_chunked_forward(
    features: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, scale: float,
    margin: float, label_smoothing: float, feature_norm: bool, weight_norm: bool, chunk: int,
) -> Tuple[torch.Tensor, ...]:
    """Kernel contract of heat_fast.ops.he_loss_chunked: (loss_rows, lse, target_grad, ‖x‖,
    ‖W_c‖). The forward needs no chunks (its buffers are per row), so ``chunk`` is unused."""
    batch, dim = features.shape
    classes = weight.shape[0]
    dtype = acc_dtype(features)
    sixteen_bit = _feeds_tensor_cores(features, weight)
    plan = stats_plan(batch, classes, dtype, sixteen_bit, common.target_programs(features.device))
    new = features.new_empty
    with on_device(features):
        feature_norms = new((batch,), dtype=dtype)
        weight_norms = new((classes,), dtype=dtype)
        blocks_x = _ceil(batch, NORM_ROWS)
        _row_norms_kernel[(blocks_x + _ceil(classes, NORM_ROWS),)](
            features, weight, feature_norms, weight_norms, batch, classes, dim, blocks_x,
            FEATURE_NORM=bool(feature_norm), WEIGHT_NORM=bool(weight_norm), ACC=tl_dtype(dtype),
            ROWS=NORM_ROWS, BLOCK_D=max(16, min(NORM_BLOCK_D, triton.next_power_of_2(dim))),
        )
        stats = new((plan.splits, 4, batch), dtype=dtype)
        _chunk_stats_kernel[(plan.programs,)](
            features, weight, target, feature_norms, weight_norms, stats, batch, classes, dim,
            plan.classes_per_split, plan.blocks_m, float(scale), float(margin),
            ACC=tl_dtype(dtype), UPCAST=not sixteen_bit, BLOCK_M=plan.block_m,
            BLOCK_N=plan.block_n, BLOCK_K=plan.block_k,
        )
        loss, lse, target_grad = (new((batch,), dtype=dtype) for _ in range(3))
        _chunk_loss_kernel[(batch,)](
            stats, plan.splits, target, loss, lse, target_grad, batch, classes, float(scale),
            float(label_smoothing), ACC=tl_dtype(dtype),
        )
    return loss, lse, target_grad, feature_norms, weight_norms


def he_ce_chunked_backward(
    grad_rows: torch.Tensor, features: torch.Tensor, weight: torch.Tensor,
    target: torch.Tensor, lse: torch.Tensor, target_grad: torch.Tensor,
    feature_norms: torch.Tensor, weight_norms: torch.Tensor, scale: float,
    label_smoothing: float, feature_norm: bool, weight_norm: bool, chunk: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel contract of heat_fast.ops.he_loss_chunked: (d_features, d_weight)."""
    batch, dim = features.shape
    classes = weight.shape[0]
    dtype = acc_dtype(features)
    sixteen_bit = _feeds_tensor_cores(features, weight)
    programs = common.target_programs(features.device)
    tile = stats_plan(batch, classes, dtype, sixteen_bit, programs)
    step = chunk_classes(batch, classes, dim, chunk)
    precision_x, precision_w = _precision(features.dtype), _precision(weight.dtype)
    block_d = max(16, min(NORM_BLOCK_D, triton.next_power_of_2(dim)))
    flags = dict(FEATURE_NORM=bool(feature_norm), WEIGHT_NORM=bool(weight_norm),
                 ACC=tl_dtype(dtype), BLOCK_D=block_d)
    device = features.device
    with on_device(features):
        d_features = torch.empty_like(features)
        d_weight = torch.empty_like(weight)
        g_x = torch.zeros((batch, dim), dtype=dtype, device=device)
        g_x_chunk = torch.empty((batch, dim), dtype=dtype, device=device)
        grad_cos = torch.empty((batch * step,), dtype=dtype, device=device)
        g_w = torch.empty((step, dim), dtype=dtype, device=device)
        for first in range(0, classes, step):
            count = min(step, classes - first)
            block = grad_cos[:batch * count].view(batch, count)
            _chunk_grad_cos_kernel[(tile.blocks_m * _ceil(count, tile.block_n),)](
                features, weight, target, feature_norms, weight_norms, lse, target_grad, block,
                batch, classes, dim, first, count, tile.blocks_m, float(scale),
                float(label_smoothing), ACC=tl_dtype(dtype), UPCAST=not sixteen_bit,
                BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k,
            )
            plan = backward_plan(batch, count, dim, dtype,
                                 "tf32x3" in (precision_x, precision_w), programs)
            w_chunk, n_chunk = weight[first:first + count], weight_norms[first:first + count]
            _grad_products_kernel[(plan.programs,)](
                block, grad_rows, feature_norms, n_chunk, features, w_chunk, g_x_chunk, g_w,
                batch, count, dim, _ceil(batch, plan.block_m) * _ceil(dim, plan.block_n),
                ACC=tl_dtype(dtype), PRECISION_X=precision_x, PRECISION_W=precision_w,
                BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_K=plan.block_k,
            )
            g_x += g_x_chunk
            _normalize_rows_kernel[(count,)](
                g_x, features, feature_norms, d_features, g_w, w_chunk, n_chunk,
                d_weight[first:first + count], 0, dim, **flags,
            )
        _normalize_rows_kernel[(batch,)](
            g_x, features, feature_norms, d_features, g_w, weight, weight_norms, d_weight,
            batch, dim, **flags,
        )
    return d_features, d_weight
