"""Published recipes by name (AT_HE, Bag of Tricks, TRADES, FreeAT, FastAT public code):
a preset sets config defaults that explicit command-line flags override.

CIFAR-10 presets use WRN-34-10, L∞ ε 8/255 (0.031 where noted), SGD momentum 0.9, lr 0.1, batch 128;
milestones are 0-based epoch indices from which the lr is multiplied by 0.1.
"""
from __future__ import annotations

from typing import Dict

_CIFAR = {"dataset": "cifar10", "model": "wrn-34-10", "eps": 8 / 255, "alpha": 2 / 255,
          "steps": 10, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "schedule": "multistep",
          "crop_padding": 4, "flip": True, "bn_eval": True}
# AT_HE (Pang et al. 2020): 77 epochs, lr ×0.1 from epoch 75 (1-indexed), start x + 0.001·N
_AT_HE = dict(_CIFAR, epochs=77, milestones=[74], start="normal")
# AT_HE parity (the public code's train_adv_cifar10.py and its README commands): ε 0.031,
# α 0.007, 10 steps from x + 0.001·N, BN eval while crafting, the head weight renormalized in
# place every forward, wd 2e-4 unless the README command passes --wd (PGD-AT + HE: 5e-4)
_AT_HE_PARITY = dict(_AT_HE, he=True, eps=0.031, alpha=0.007, weight_norm="project",
                     weight_decay=2e-4)
# Bag of Tricks (Pang et al. 2021): 110 epochs, 0.1 → 0.01 at 100 → 0.001 at 105, uniform start
_BOT = dict(_CIFAR, epochs=110, milestones=[100, 105], start="uniform", weight_decay=5e-4)
# official TRADES: 76 epochs, wd 2e-4, lr ×0.1 from epoch 75 (1-indexed), ε 0.031, α 0.007
_TRADES = dict(_CIFAR, framework="trades", epochs=76, milestones=[74], weight_decay=2e-4,
               eps=0.031, alpha=0.007, beta=6.0, start="normal")
# FreeAT (+HE) on ImageNet, ResNet-50: ε = step = 4/255, m = 4 replays, 90/m → 23 epochs
_FREE = {"framework": "free-at", "dataset": "imagenet", "model": "resnet50", "image_size": 224,
         "eps": 4 / 255, "alpha": 4 / 255, "steps": 4, "epochs": 23, "batch_size": 256,
         "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "multistep",
         "milestones": [8, 16], "crop_padding": 0, "flip": True}
# FastAT (Wong et al. 2020), PreActResNet-18: FGSM α = 1.25ε, 15 epochs, cyclic lr max 0.2
_FAST = {"framework": "fast-at", "dataset": "cifar10", "model": "preact-resnet18",
         "eps": 8 / 255, "alpha": 10 / 255, "steps": 1, "epochs": 15, "batch_size": 128,
         "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cyclic",
         "crop_padding": 4, "flip": True}

PRESETS: Dict[str, dict] = {
    "pgd-at": dict(_BOT, framework="pgd-at", he=False),
    "pgd-at-he": dict(_AT_HE, framework="pgd-at", he=True, scale=15.0, margin=0.2,
                      weight_decay=5e-4),
    "pgd-at-he-bot": dict(_BOT, framework="pgd-at", he=True, scale=10.0, margin=0.2),
    "at-he-pgd": dict(_AT_HE_PARITY, framework="pgd-at", scale=10.0, margin=0.2,
                      weight_decay=5e-4),
    "at-he-trades": dict(_AT_HE_PARITY, framework="trades", scale=15.0, margin=0.2, beta=6.0),
    "at-he-alp": dict(_AT_HE_PARITY, framework="alp", scale=20.0, margin=0.3, alp_weight=0.5),
    "alp": dict(_AT_HE, framework="alp", he=False, alp_weight=0.5, weight_decay=5e-4),
    "alp-he": dict(_AT_HE, framework="alp", he=True, scale=20.0, margin=0.3, alp_weight=0.5,
                   weight_decay=5e-4),
    "trades": dict(_TRADES, he=False),
    "trades-he": dict(_TRADES, he=True, scale=15.0, margin=0.2),
    "free-at": dict(_FREE, he=False),
    "free-at-he": dict(_FREE, he=True, scale=10.0, margin=0.2),
    "fast-at": dict(_FAST, he=False),
    "fast-at-he": dict(_FAST, he=True, scale=15.0, margin=0.2),
}
PRESET_NAMES = tuple(PRESETS)
DESCRIPTIONS: Dict[str, str] = {
    "pgd-at": "PGD-AT, Bag of Tricks recipe (Pang et al. 2021): WRN-34-10, 110 epochs",
    "pgd-at-he": "PGD-AT + HE, AT_HE recipe (Pang et al. 2020): WRN-34-10, s 15, m 0.2, 77 epochs",
    "pgd-at-he-bot": "PGD-AT + HE with the Bag of Tricks schedule: s 10, m 0.2, 110 epochs",
    "at-he-pgd": "AT_HE parity, its README's PGD-AT + HE command: s 10, m 0.2, wd 5e-4, "
                 "eps 0.031, alpha 0.007, weight norm project, 77 epochs",
    "at-he-trades": "AT_HE parity, TRADES + HE: s 15, m 0.2, beta 6, wd 2e-4, "
                    "weight norm project, 77 epochs",
    "at-he-alp": "AT_HE parity, ALP + HE: s 20, m 0.3, lambda 0.5, wd 2e-4, "
                 "weight norm project, 77 epochs",
    "alp": "ALP (Kannan et al. 2018) on the AT_HE schedule: lambda 0.5, wd 5e-4, 77 epochs",
    "alp-he": "ALP + HE (AT_HE's s, m, lambda): s 20, m 0.3, lambda 0.5, wd 5e-4 as for "
              "PGD-AT + HE (AT_HE's script default 2e-4: at-he-alp), 77 epochs",
    "trades": "TRADES, official recipe (Zhang et al. 2019): beta 6, wd 2e-4, 76 epochs",
    "trades-he": "TRADES + HE (AT_HE): s 15, m 0.2, beta 6, 76 epochs",
    "free-at": "FreeAT on ImageNet (Shafahi et al. 2019): ResNet-50, m 4 replays, eps 4/255, 23 epochs",
    "free-at-he": "FreeAT + HE on ImageNet (AT_HE): s 10, m 0.2",
    "fast-at": "FastAT (Wong et al. 2020): PreActResNet-18, FGSM alpha 1.25 eps, cyclic lr 0.2, 15 epochs",
    "fast-at-he": "FastAT + HE: s 15, m 0.2",
}


def preset(name: str) -> dict:
    """A copy of preset ``name``'s config values; unknown names raise ValueError."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid names: {', '.join(PRESET_NAMES)}")
    return dict(PRESETS[name], preset=name)
