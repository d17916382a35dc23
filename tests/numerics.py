"""Tolerance by error ratio (SPEC test conventions).

A fast path's error against a float64 ground truth may be at most ``ratio`` times the error
of the reference path in the same precision, plus a floor for values that round to the
output dtype or cancel to about zero.
"""
from typing import Optional

import torch

UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}


def assert_error_ratio(fast: torch.Tensor, ref: torch.Tensor, truth: torch.Tensor,
                       ratio: float = 2.0, floor: Optional[float] = None, what: str = "") -> None:
    """|fast − truth| ≤ ratio·|ref − truth| + floor (max norms), with a dtype-aware floor."""
    assert fast.shape == truth.shape, f"{what}: shape {tuple(fast.shape)} != {tuple(truth.shape)}"
    assert fast.dtype == ref.dtype, f"{what}: dtype {fast.dtype} != reference dtype {ref.dtype}"
    truth = truth.double()
    scale = truth.abs().max().item() if truth.numel() else 0.0
    if floor is None:
        floor = 8 * UNIT_ROUNDOFF[fast.dtype] * max(scale, 1e-3) + 1e-12
    err_fast = (fast.double() - truth).abs().max().item()
    err_ref = (ref.double() - truth).abs().max().item()
    bound = ratio * err_ref + floor
    assert err_fast <= bound, (
        f"{what}: fast error {err_fast:.3e} > {ratio}×reference error {err_ref:.3e} + floor {floor:.1e}"
    )
