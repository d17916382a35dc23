"""Whether a module has hooks (a fused or folded fast path must not skip them)."""
from torch import nn


def has_hooks(module: nn.Module) -> bool:
    """True if ``module`` has any forward, forward-pre, backward or backward-pre hook."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)
