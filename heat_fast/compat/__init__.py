"""Drop-in replacements for the public adversarial-training code, one module per codebase,
each function with the public signature and defaults, built on heat_fast's fused ops:

- :mod:`heat_fast.compat.at_he`: AT_HE's ``pgd_loss``, ``alp_loss``, ``trades_loss``,
  ``HELoss`` (ShawnXYang/AT_HE, CIFAR-10).
- :mod:`heat_fast.compat.trades`: the official TRADES ``trades_loss`` (yaodongyu/TRADES).
- :mod:`heat_fast.compat.fast_adversarial`: ``attack_pgd`` and the FGSM / free δ updates in
  normalized space (locuslab/fast_adversarial, CIFAR10).
- :mod:`heat_fast.compat.free_at`: the free-AT replay with its global noise
  (mahyarnajibi/FreeAdversarialTraining; AT_HE's ImageNet part with the HE loss).
- :mod:`heat_fast.compat.bag_of_tricks`: BoT's label smoothing and HE loss
  (P2333/Bag-of-Tricks-for-AT).

docs/porting.md shows the diff that ports each codebase and what changes numerically.
heat_fast's own drop-in losses (:mod:`heat_fast.training`) keep cleaner semantics instead.
"""
from heat_fast.compat import at_he, bag_of_tricks, fast_adversarial, free_at, trades

__all__ = ["at_he", "bag_of_tricks", "fast_adversarial", "free_at", "trades"]
