"""Per-epoch test accuracy: clean and under PGD on a fixed subset (a training monitor;
use ``heat-fast eval`` for an honest robustness evaluation)."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from heat_fast import progress
from heat_fast.training.crafting import crafting_mode, pgd_attack
from heat_fast.training.objective import Objective


def evaluate_pgd(model: nn.Module, images: Tensor, labels: Tensor, objective: Objective,
                 eps: float, alpha: float, steps: int, batch_size: int = 256,
                 generator: Optional[torch.Generator] = None, norm: str = "linf",
                 desc: str = "eval", show_progress: bool = False) -> Dict[str, float]:
    """Clean and PGD-``steps`` accuracy (uniform start in the ``norm`` ball, the crafting CE:
    s·cos with HE) in eval mode; every module's mode is restored. An example counts as
    robust only if it is classified correctly both clean and attacked, so pgd_acc <= clean_acc.
    ``show_progress`` reports each batch to :mod:`heat_fast.progress` (kind ``monitor``).
    Returns {"clean_acc", "pgd_acc"}."""
    clean = robust = 0
    batches = range(0, images.shape[0], batch_size)
    with crafting_mode(model, True), progress.bar(len(batches), desc, kind="monitor",
                                                  enabled=show_progress) as bar:
        for i in batches:
            x, y = images[i:i + batch_size], labels[i:i + batch_size]
            with torch.no_grad():
                right = objective.forward(model, x).logits.argmax(1) == y
            x_adv = pgd_attack(model, x, lambda xa: objective.craft_loss(model, xa, y), eps,
                               alpha, steps, "uniform", generator, norm=norm,
                               backend=objective.backend, dtype=objective.compute_dtype)
            with torch.no_grad():
                right_adv = right & (objective.forward(model, x_adv).logits.argmax(1) == y)
            clean, robust = clean + int(right.sum()), robust + int(right_adv.sum())
            bar.update(1, units=x.shape[0] * (steps + 2))
    n = max(images.shape[0], 1)
    return {"clean_acc": clean / n, "pgd_acc": robust / n}
