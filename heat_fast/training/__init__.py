"""Adversarial training with or without hypersphere embedding (SPEC §3).

Drop-in losses for existing AT code (:func:`trades_loss` with the official TRADES
signature, :func:`pgd_at_loss`, :func:`alp_loss`), the :class:`Trainer` for your own model,
optimizer and loader, the frameworks themselves, presets, and checkpoint loading
(:func:`load_model`). ``heat-fast train`` drives :mod:`heat_fast.training.run`.
"""
from heat_fast.training.checkpoint import CheckpointError, load_model
from heat_fast.training.config import ConfigError, TrainConfig
from heat_fast.training.crafting import crafting_mode, pgd_attack
from heat_fast.training.frameworks import (ALP, FRAMEWORKS, PGDAT, TRADES, FastAT, Framework,
                                           FreeAT, alp_loss, build_framework, pgd_at_loss,
                                           trades_loss)
from heat_fast.training.objective import Objective
from heat_fast.training.presets import PRESET_NAMES, PRESETS
from heat_fast.training.trainer import Trainer

__all__ = [
    "ALP", "CheckpointError", "ConfigError", "FRAMEWORKS", "FastAT", "Framework", "FreeAT",
    "Objective", "PGDAT", "PRESETS", "PRESET_NAMES", "TRADES", "TrainConfig", "Trainer",
    "alp_loss", "build_framework", "crafting_mode", "load_model", "pgd_at_loss",
    "pgd_attack", "trades_loss",
]
