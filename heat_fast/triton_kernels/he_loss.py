"""Triton kernels of the fused HE cross-entropy (forward and backward).

Forward, one program per block of BLOCK_B rows: feature row norms, then for each tile of
BLOCK_C classes the dots x·W_cᵀ (tl.dot over D tiles, float32 accumulation) with the class
norms from the same tiles, cos = dot / (‖x‖‖W_c‖), z = s(cos − m·1[c = y]) stored in the
grad_cos buffer, and an online log-sum-exp; a second sweep over the stored z turns them into
dL/dcos in place. The loss is formed as log1p(Σ_{j≠y} exp(z_j − z_y)) and the true-class
gradient as −Σ_{j≠y} p_j, so neither cancels when p_y → 1. No B×C tensor besides grad_cos.

Backward: two launches of one scaled GEMM kernel give the unprojected gradients
G W̃ (features) and Gᵀ x̃ (weight) in float32, then a row kernel applies the normalization
backward (I − x̃x̃ᵀ)/‖x‖ and casts to the input dtype.

All math is float32 (float64 for float64 inputs); tiles are upcast right after load, which
also keeps the Triton interpreter exact for bfloat16.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from heat_fast.triton_kernels.common import acc_dtype, tl_dtype

NORM_EPS = 1e-12
BLOCK_B = 16
BLOCK_D = 32
MAX_BLOCK_C = 128
# Above this gap z_max − z_y the log1p form would overflow; use lse − z_y directly.
_LOG1P_LIMIT = 20.0


@triton.jit
def _log1p(u):
    """log(1 + u) accurate for small u without libdevice (which the interpreter lacks)."""
    one_plus = 1.0 + u
    exact = one_plus == 1.0
    return tl.where(exact, u, tl.log(one_plus) * (u / tl.where(exact, 1.0, one_plus - 1.0)))


@triton.jit
def _he_ce_fwd_kernel(
    x_ptr, w_ptr, y_ptr, loss_ptr, gcos_ptr, nx_ptr, nw_ptr,
    B, C, D, scale, margin, smoothing,
    FEATURE_NORM: tl.constexpr, WEIGHT_NORM: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    dcols = tl.arange(0, BLOCK_D)
    y = tl.load(y_ptr + rows, mask=row_ok, other=-1)

    xsq = tl.zeros((BLOCK_B,), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + dcols
        x = tl.load(x_ptr + rows[:, None] * D + dd[None, :],
                    mask=row_ok[:, None] & (dd[None, :] < D), other=0.0).to(ACC)
        xsq += tl.sum(x * x, axis=1)
    if FEATURE_NORM:
        nx = tl.sqrt(xsq)
        inv_nx = 1.0 / tl.maximum(nx, NORM_EPS)
    else:
        nx = tl.zeros((BLOCK_B,), dtype=ACC) + 1.0
        inv_nx = nx
    tl.store(nx_ptr + rows, nx, mask=row_ok)

    run_max = tl.zeros((BLOCK_B,), dtype=ACC) - float("inf")
    run_sum = tl.zeros((BLOCK_B,), dtype=ACC)       # Σ_j exp(z_j − run_max)
    run_other = tl.zeros((BLOCK_B,), dtype=ACC)     # Σ_{j≠y} exp(z_j − run_max)
    z_true = tl.zeros((BLOCK_B,), dtype=ACC)
    z_total = tl.zeros((BLOCK_B,), dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        cls = c0 + tl.arange(0, BLOCK_C)
        cls_ok = cls < C
        dots = tl.zeros((BLOCK_B, BLOCK_C), dtype=ACC)
        wsq = tl.zeros((BLOCK_C,), dtype=ACC)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + dcols
            d_ok = dd < D
            x = tl.load(x_ptr + rows[:, None] * D + dd[None, :],
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(ACC)
            w = tl.load(w_ptr + cls[:, None] * D + dd[None, :],
                        mask=cls_ok[:, None] & d_ok[None, :], other=0.0).to(ACC)
            dots += tl.dot(x, tl.trans(w), input_precision="ieee")
            wsq += tl.sum(w * w, axis=1)
        if WEIGHT_NORM:
            nw = tl.sqrt(wsq)
            inv_nw = 1.0 / tl.maximum(nw, NORM_EPS)
        else:
            nw = tl.zeros((BLOCK_C,), dtype=ACC) + 1.0
            inv_nw = nw
        if pid == 0:
            tl.store(nw_ptr + cls, nw, mask=cls_ok)
        is_true = cls[None, :] == y[:, None]
        cos = dots * inv_nx[:, None] * inv_nw[None, :]
        z = scale * (cos - tl.where(is_true, margin, 0.0))
        z = tl.where(cls_ok[None, :], z, -float("inf"))
        tl.store(gcos_ptr + rows[:, None] * C + cls[None, :], z,
                 mask=row_ok[:, None] & cls_ok[None, :])
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        rescale = tl.exp(run_max - new_max)
        e = tl.exp(z - new_max[:, None])
        run_sum = run_sum * rescale + tl.sum(e, axis=1)
        run_other = run_other * rescale + tl.sum(tl.where(is_true, 0.0, e), axis=1)
        run_max = new_max
        z_true += tl.sum(tl.where(is_true, z, 0.0), axis=1)
        z_total += tl.sum(tl.where(cls_ok[None, :], z, 0.0), axis=1)

    gap = run_max - z_true
    near = tl.minimum(gap, _LOG1P_LIMIT)
    ce = tl.where(gap <= _LOG1P_LIMIT, _log1p(run_other * tl.exp(near)),
                  gap + tl.log(run_sum))
    loss = ce + smoothing * (z_true - z_total / C)
    tl.store(loss_ptr + rows, loss, mask=row_ok)

    inv_sum = 1.0 / run_sum
    true_grad = -run_other * inv_sum + smoothing * (1.0 - 1.0 / C)
    for c0 in range(0, C, BLOCK_C):
        cls = c0 + tl.arange(0, BLOCK_C)
        ok = row_ok[:, None] & (cls[None, :] < C)
        ptrs = gcos_ptr + rows[:, None] * C + cls[None, :]
        z = tl.load(ptrs, mask=ok, other=-float("inf"))
        p = tl.exp(z - run_max[:, None]) * inv_sum[:, None] - smoothing / C
        g = tl.where(cls[None, :] == y[:, None], true_grad[:, None], p)
        tl.store(ptrs, scale * g, mask=ok)


@triton.jit
def _scaled_gemm_kernel(
    a_ptr, a_stride_m, a_stride_k, m_scale_ptr, k_scale_ptr, b_ptr, out_ptr,
    M, K, D, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """out[m, d] = m_scale[m] · Σ_k A[m, k] · k_scale[k] · B[k, d] (B is K×D contiguous)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < M
    d_ok = dd < D
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(a_ptr + rows[:, None] * a_stride_m + ks[None, :] * a_stride_k,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)
        k_scale = tl.load(k_scale_ptr + ks, mask=k_ok, other=0.0).to(ACC)
        b = tl.load(b_ptr + ks[:, None] * D + dd[None, :],
                    mask=k_ok[:, None] & d_ok[None, :], other=0.0).to(ACC)
        acc += tl.dot(a * k_scale[None, :], b, input_precision="ieee")
    m_scale = tl.load(m_scale_ptr + rows, mask=row_ok, other=0.0).to(ACC)
    tl.store(out_ptr + rows[:, None] * D + dd[None, :], acc * m_scale[:, None],
             mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _normalize_backward_kernel(
    dhat_ptr, x_ptr, norm_ptr, out_ptr, M, D,
    NORMALIZE: tl.constexpr, ACC: tl.constexpr, OUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """out = (dhat − x̂ (x̂·dhat)) / ‖x‖ per row (dhat / eps where ‖x‖ ≤ eps), or dhat."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    cols = tl.arange(0, BLOCK_D)
    norm = tl.load(norm_ptr + rows, mask=row_ok, other=1.0).to(ACC)
    inv = 1.0 / tl.maximum(norm, NORM_EPS)
    project = norm > NORM_EPS
    radial = tl.zeros((BLOCK_M,), dtype=ACC)
    if NORMALIZE:
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + cols
            ok = row_ok[:, None] & (dd[None, :] < D)
            dhat = tl.load(dhat_ptr + rows[:, None] * D + dd[None, :], mask=ok, other=0.0)
            x = tl.load(x_ptr + rows[:, None] * D + dd[None, :], mask=ok, other=0.0).to(ACC)
            radial += tl.sum(x * inv[:, None] * dhat, axis=1)
        radial = tl.where(project, radial, 0.0)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + cols
        ok = row_ok[:, None] & (dd[None, :] < D)
        dhat = tl.load(dhat_ptr + rows[:, None] * D + dd[None, :], mask=ok, other=0.0)
        if NORMALIZE:
            x = tl.load(x_ptr + rows[:, None] * D + dd[None, :], mask=ok, other=0.0).to(ACC)
            grad = (dhat - x * inv[:, None] * radial[:, None]) * inv[:, None]
        else:
            grad = dhat
        tl.store(out_ptr + rows[:, None] * D + dd[None, :], grad.to(OUT), mask=ok)


def _block_c(num_classes: int) -> int:
    return max(16, min(MAX_BLOCK_C, triton.next_power_of_2(num_classes)))


def he_ce_forward(
    features: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, scale: float,
    margin: float, label_smoothing: float, feature_norm: bool, weight_norm: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel contract of heat_fast.ops.he_loss: (loss_rows, grad_cos, ‖x‖, ‖W_c‖)."""
    batch, dim = features.shape
    classes = weight.shape[0]
    dtype = acc_dtype(features, weight)
    loss = features.new_empty((batch,), dtype=dtype)
    grad_cos = features.new_empty((batch, classes), dtype=dtype)
    feature_norms = features.new_empty((batch,), dtype=dtype)
    weight_norms = features.new_empty((classes,), dtype=dtype)
    _he_ce_fwd_kernel[(triton.cdiv(batch, BLOCK_B),)](
        features, weight, target, loss, grad_cos, feature_norms, weight_norms,
        batch, classes, dim, float(scale), float(margin), float(label_smoothing),
        FEATURE_NORM=bool(feature_norm), WEIGHT_NORM=bool(weight_norm), ACC=tl_dtype(dtype),
        BLOCK_B=BLOCK_B, BLOCK_C=_block_c(classes), BLOCK_D=BLOCK_D,
    )
    return loss, grad_cos, feature_norms, weight_norms


def _input_grad(a: torch.Tensor, a_strides: Tuple[int, int], m_scale: torch.Tensor,
                k_scale: torch.Tensor, other: torch.Tensor, source: torch.Tensor,
                norms: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Gradient w.r.t. ``source`` (M×D): normalization backward of m_scale·A·k_scale·other."""
    rows, dim = source.shape
    dtype = acc_dtype(source, other)
    dhat = torch.empty((rows, dim), dtype=dtype, device=source.device)
    block_d = 64
    _scaled_gemm_kernel[(triton.cdiv(rows, 16), triton.cdiv(dim, block_d))](
        a, a_strides[0], a_strides[1], m_scale, k_scale, other, dhat,
        rows, other.shape[0], dim, ACC=tl_dtype(dtype),
        BLOCK_M=16, BLOCK_K=32, BLOCK_D=block_d,
    )
    out = torch.empty_like(source)
    _normalize_backward_kernel[(triton.cdiv(rows, 16),)](
        dhat, source, norms, out, rows, dim,
        NORMALIZE=bool(normalize), ACC=tl_dtype(dtype), OUT=tl_dtype(source.dtype),
        BLOCK_M=16, BLOCK_D=BLOCK_D,
    )
    return out


def he_ce_backward(
    grad_rows: torch.Tensor, features: torch.Tensor, weight: torch.Tensor,
    grad_cos: torch.Tensor, feature_norms: torch.Tensor, weight_norms: torch.Tensor,
    feature_norm: bool, weight_norm: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel contract of heat_fast.ops.he_loss: (d_features, d_weight)."""
    batch, classes = grad_cos.shape
    inv_nw = 1.0 / weight_norms.clamp_min(NORM_EPS)
    inv_nx = 1.0 / feature_norms.clamp_min(NORM_EPS)
    ones_c = torch.ones_like(weight_norms)
    d_features = _input_grad(grad_cos, (classes, 1), grad_rows, inv_nw, weight,
                             features, feature_norms, feature_norm)
    d_weight = _input_grad(grad_cos, (1, classes), ones_c, grad_rows * inv_nx, features,
                           weight, weight_norms, weight_norm)
    return d_features, d_weight
