"""Free adversarial training (github.com/mahyarnajibi/FreeAdversarialTraining, ``main_free.py``
and ``lib/utils.py``; AT_HE's ImageNet ``main_free.py`` adds the HE loss) on the fused
delta-form step.

One replay of the public loop: the first B rows of the global noise are the perturbation,
in1 = normalize(clamp(x + noise, 0, 1)) with the per-channel mean/std; the loss's one
backward gives the weight gradients and the noise gradient; the global noise moves by
fgsm_step·sign(grad) and is clamped to [−clip_eps, clip_eps] — one fused
:func:`heat_fast.ops.pgd_delta_step` with no box (the box is the clamp of x + noise in the
forward), in place, so the noise carries over to the next replay and the next minibatch; then
``optimizer.step()``. (The public code clamps every row of the global noise; rows beyond B
are already within ±clip_eps, so only the first B change.) The noise, fgsm_step and clip_eps
are in pixel units ([0, 1] images, the configs' values divided by 255), as in the public
code.

With ``s_HE`` (AT_HE's ``--FN``/``--WN`` runs, a model that returns cosines) the loss is
CE(s·(cos − m·onehot(y)), y), the fused :func:`heat_fast.ops.cos_margin_cross_entropy`, where
the public code builds s·(cos − m·onehot) with a one-hot of 1000 classes (here: the model's
number of outputs). Results agree to float32 rounding (tests/test_compat.py).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from heat_fast.ops import cos_margin_cross_entropy, pgd_delta_step


def replay_step(model: nn.Module, criterion: Optional[Callable[[Tensor, Tensor], Tensor]],
                optimizer: torch.optim.Optimizer, input: Tensor, target: Tensor,
                global_noise_data: Tensor, mean: Tensor, std: Tensor, fgsm_step: float,
                clip_eps: float, s_HE: Optional[float] = None,
                angular_margin_HE: float = 0.0) -> Tuple[Tensor, Tensor]:
    """One replay of ``main_free.py``'s ``train`` loop (module docstring), updating
    ``global_noise_data`` (N ≥ B, C, H, W) in place and taking one ``optimizer`` step.

    input (B, C, H, W) in [0, 1]; mean, std broadcastable to an image (e.g. (3, 1, 1) or
    the public (3, H, W)); ``criterion`` the loss on the model's outputs (the public
    ``nn.CrossEntropyLoss()``), unused when ``s_HE`` is given (then the HE loss with margin
    ``angular_margin_HE`` on the cosines the model returns). Returns (output, loss), for the
    caller's accuracy and meters. Call it ``n_repeats`` times per minibatch.
    """
    if s_HE is None and criterion is None:
        raise ValueError("replay_step needs a criterion when s_HE is None")
    batch = len(input)
    noise_batch = global_noise_data[:batch].detach().clone().requires_grad_()
    in1 = torch.clamp(input + noise_batch, 0, 1.0).sub(mean).div(std)
    output = model(in1)
    if s_HE is None:
        loss = criterion(output, target)
    else:
        loss = cos_margin_cross_entropy(output, target, scale=s_HE, margin=angular_margin_HE)
    optimizer.zero_grad()
    loss.backward()
    pgd_delta_step(global_noise_data[:batch], noise_batch.grad, input, clip_eps, fgsm_step,
                   "linf", None, out=global_noise_data[:batch])
    optimizer.step()
    return output, loss
