"""Robust accuracy of a model under a list of named attacks, per example.

``evaluate`` runs every attack on every example independently (so each attack's number is
its own), then reports per-example correctness masks where an example counts as robust
under an attack only if it is classified correctly both clean and on the attack's output;
``worst-case`` is the AND over all attacks run. Hence robust ≤ clean and worst ≤ each
attack, by construction. Every attack output is checked to lie in its ε-ball.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from heat_fast import progress as progress_display
from heat_fast.attacks import Attack, build_attack, eval_mode, predict
from heat_fast.attacks.registry import parse_name
from heat_fast.budget import format_eps

CLEAN = "clean"
WORST = "worst-case"
DEFAULT_ATTACKS = (CLEAN, "pgd20-ce", "pgd20-cw", "apgd-ce", "apgd-dlr", WORST)
BALL_TOLERANCE = 1e-5


@dataclass
class EvalResult:
    """Per-attack accuracy (fractions), correctness masks (n,) bool and seconds."""

    eps: float
    seed: int
    names: List[str]
    correct: Dict[str, Tensor]
    seconds: Dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.correct[CLEAN].numel())

    @property
    def accuracy(self) -> Dict[str, float]:
        return {name: float(self.correct[name].double().mean()) for name in self.names}

    def to_dict(self) -> dict:
        return {
            "eps": self.eps, "seed": self.seed, "n_examples": self.n,
            "accuracy": self.accuracy, "seconds": self.seconds,
            "correct": {name: self.correct[name].int().tolist() for name in self.names},
        }


def parse_attack_list(names: Sequence[str]) -> List[str]:
    """Normalized attack names, ``clean`` first and ``worst-case`` (if asked) last;
    ValueError for an unknown name."""
    cleaned = [n.strip().lower() for n in names if n.strip()]
    for name in cleaned:
        if name not in (CLEAN, WORST):
            parse_name(name)
    ordered = [CLEAN] + [n for n in cleaned if n not in (CLEAN, WORST)]
    return list(dict.fromkeys(ordered + ([WORST] if WORST in cleaned else [])))


def _model_device(model: nn.Module, default: torch.device) -> torch.device:
    tensors = list(model.parameters()) + list(model.buffers())
    return tensors[0].device if tensors else default


def _check_in_ball(name: str, attack: Attack, x: Tensor, x_adv: Tensor) -> None:
    delta = (x_adv - x).flatten(1).float()
    size = delta.abs().amax(dim=1) if getattr(attack, "norm", "linf") == "linf" else delta.norm(dim=1)
    limit = attack.eps * (1 + BALL_TOLERANCE) + BALL_TOLERANCE
    if bool((size > limit).any()) or bool((x_adv < 0).any()) or bool((x_adv > 1).any()):
        raise RuntimeError(f"attack {name!r} returned a point outside the eps-ball or [0, 1]")


def evaluate(model: nn.Module, x: Tensor, y: Tensor, eps: float,
             attacks: Sequence[str] = DEFAULT_ATTACKS, batch_size: int = 256, seed: int = 0,
             backend: str = "auto", progress: bool = True, desc: Optional[str] = None
             ) -> EvalResult:
    """Evaluate ``model`` on (x, y) (on any device; batches move to the model's device)."""
    names = parse_attack_list(attacks)
    attack_names = [n for n in names if n not in (CLEAN, WORST)]
    built = {n: build_attack(n, eps, seed=seed, backend=backend) for n in attack_names}
    device = _model_device(model, x.device)
    correct: Dict[str, List[Tensor]] = {n: [] for n in [CLEAN] + attack_names}
    seconds = dict.fromkeys([CLEAN] + attack_names, 0.0)
    starts = range(0, x.shape[0], batch_size)
    passes = {n: progress_display.attack_passes(n) for n in [CLEAN] + attack_names}
    bar = progress_display.bar(len(starts) * (1 + len(attack_names)), desc or "eval",
                               enabled=progress)
    with eval_mode(model):
        for start in starts:
            xb = x[start:start + batch_size].to(device)
            yb = y[start:start + batch_size].to(device).long()
            began = time.perf_counter()
            clean = predict(model, xb) == yb
            seconds[CLEAN] += time.perf_counter() - began
            correct[CLEAN].append(clean.cpu())
            bar.update(units=len(yb) * passes[CLEAN], detail="clean")
            for name, attack in built.items():
                began = time.perf_counter()
                x_adv = attack(model, xb, yb)
                _check_in_ball(name, attack, xb, x_adv)
                correct[name].append((clean & (predict(model, x_adv) == yb)).cpu())
                seconds[name] += time.perf_counter() - began
                bar.update(units=len(yb) * passes[name], detail=f"{name} eps {format_eps(eps)}")
    bar.close()
    masks = {n: torch.cat(parts) for n, parts in correct.items()}
    if WORST in names:
        masks[WORST] = torch.stack([masks[n] for n in [CLEAN] + attack_names]).all(dim=0)
    return EvalResult(float(eps), seed, names, masks, seconds)


def eps_sweep(model: nn.Module, x: Tensor, y: Tensor, eps_values: Sequence[float],
              attacks: Sequence[str] = DEFAULT_ATTACKS, **kwargs) -> Dict[float, float]:
    """Worst-case robust accuracy over ``attacks`` at each radius in ``eps_values``
    (at ε = 0 the ball is {x}, so it is the clean accuracy and no attack runs)."""
    curve = {}
    for eps in map(float, eps_values):
        names = [CLEAN, WORST] if eps == 0 else list(attacks) + [WORST]
        curve[eps] = evaluate(model, x, y, eps, names, **kwargs).accuracy[WORST]
    return curve
