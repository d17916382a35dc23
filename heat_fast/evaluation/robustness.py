"""Robust accuracy of a model under a list of named attacks, per example.

``evaluate`` runs the attacks in list order, each only on the examples still robust after
every earlier one (AutoAttack's protocol), so each row is the robust accuracy after that
attack and all rows above it, and ``worst-case`` is the last row. With
``independent=True`` every attack runs on every example classified correctly, so each row
is that attack's own accuracy (costlier; for comparing attacks, such as CE against margin
losses on an HE model) and ``worst-case`` is the per-example AND of all rows. Either way an
example counts as robust only if it is classified correctly clean and on every attack
output it met, so robust ≤ clean and worst ≤ each row, by construction. Every attack
output is checked to lie in its ε-ball. heat_fast's attacks query a faster view of the
model (:mod:`heat_fast.evaluation.attack_view`); every output is verified on the model as
given.

The default list, :data:`DEFAULT_ATTACKS`, is heat_fast's equivalent of AutoAttack's
standard version (APGD-CE, APGD-T, FAB-T and Square with AutoAttack's settings) after a
cheap first pass of PGD-20 on CE and on the CW margin; :data:`QUICK_ATTACKS` is a much
cheaper set for monitoring training, weaker than AutoAttack.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from heat_fast import progress as progress_display
from heat_fast.attacks import Attack, build_attack, eval_mode, predict
from heat_fast.attacks.autoattack import AutoAttack
from heat_fast.attacks.registry import parse_name
from heat_fast.budget import format_eps
from heat_fast.evaluation.attack_view import as_layout, attack_view, pick_view

CLEAN = "clean"
WORST = "worst-case"
FIRST_PASS = ("pgd20-ce", "pgd20-cw")
AUTOATTACK_EQUIVALENT = ("apgd-ce", "apgd-t", "fab-t", "square")
DEFAULT_ATTACKS = (CLEAN, *FIRST_PASS, *AUTOATTACK_EQUIVALENT, WORST)
QUICK_ATTACKS = (CLEAN, "pgd20-ce", "pgd20-cw", "apgd20-t3", WORST)
STANDARD_SET = "AutoAttack-standard equivalent"
QUICK_SET = "quick (training monitor, weaker than AutoAttack)"
BALL_TOLERANCE = 1e-5


def attack_set_name(names: Sequence[str]) -> str:
    """What an attack list compares to, for result tables: the AutoAttack-standard
    equivalent (its four attacks in order, whatever runs before them), the quick set,
    the official AutoAttack, or a custom list."""
    attacks = [n for n in parse_attack_list(names) if n not in (CLEAN, WORST)]
    tail = attacks[-len(AUTOATTACK_EQUIVALENT):]
    if tuple(tail) == AUTOATTACK_EQUIVALENT:
        return STANDARD_SET
    if attacks == [n for n in QUICK_ATTACKS if n not in (CLEAN, WORST)]:
        return QUICK_SET
    if attacks == ["autoattack"]:
        return "official AutoAttack (standard)"
    return "custom" + (", with the official AutoAttack" if "autoattack" in attacks else "")


@dataclass
class EvalResult:
    """Per-row accuracy (fractions), correctness masks (n,) bool and seconds per attack.

    ``independent`` False: row k counts the examples robust after attacks 1..k."""

    eps: float
    seed: int
    names: List[str]
    correct: Dict[str, Tensor]
    seconds: Dict[str, float] = field(default_factory=dict)
    independent: bool = False

    @property
    def n(self) -> int:
        return int(self.correct[CLEAN].numel())

    @property
    def accuracy(self) -> Dict[str, float]:
        return {name: float(self.correct[name].double().mean()) for name in self.names}

    @property
    def attack_set(self) -> str:
        return attack_set_name(self.names)

    def to_dict(self) -> dict:
        return {
            "eps": self.eps, "seed": self.seed, "n_examples": self.n,
            "attack_set": self.attack_set,
            "rows": "each attack on every example" if self.independent else
                    "cumulative: each attack on the examples still robust",
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


class _Runner:
    """Runs attacks on chosen examples of (x, y) in batches on the model's device; ``bar``
    (heat_fast.progress) counts phases and the forward/backward passes each batch costs."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int, bar):
        self.model, self.x, self.y, self.batch_size, self.bar = model, x, y, batch_size, bar
        self.device = _model_device(model, x.device)
        self.view: Optional[str] = None

    def _batches(self, mask: Tensor, name: str, detail: str):
        idx = mask.nonzero().squeeze(1)
        passes = progress_display.attack_passes(name)
        for start in range(0, idx.numel(), self.batch_size):
            chunk = idx[start:start + self.batch_size]
            yield chunk, self.x[chunk].to(self.device), self.y[chunk].to(self.device).long()
            self.bar.update(0, units=chunk.numel() * passes, detail=detail)
        self.bar.update(1, units=0, detail=detail)

    def clean(self) -> Tensor:
        correct = torch.zeros(self.x.shape[0], dtype=torch.bool)
        for chunk, xb, yb in self._batches(torch.ones_like(correct), CLEAN, CLEAN):
            correct[chunk] = (predict(self.model, xb) == yb).cpu()
        return correct

    def _craft(self, attack: Attack, x: Tensor, y: Tensor) -> Tensor:
        """The attack's output, in x's layout; heat_fast's attacks query the model through
        the fastest :func:`attack_view` that computes it (picked on the first batch), the
        official package the model as given."""
        if isinstance(attack, AutoAttack):
            return attack(self.model, x, y)
        if self.view is None:
            self.view = pick_view(self.model, x)
        with attack_view(self.model, self.view) as layout:
            x_adv = attack(self.model, as_layout(x, layout), y)
        return x_adv if x_adv.stride() == x.stride() else torch.empty_like(x).copy_(x_adv)

    def survivors(self, name: str, attack: Attack, todo: Tensor) -> Tensor:
        """The examples of ``todo`` still classified correctly on the attack's output."""
        survived = torch.zeros_like(todo)
        for chunk, xb, yb in self._batches(todo, name, f"{name} eps {format_eps(attack.eps)}"):
            x_adv = self._craft(attack, xb, yb)
            _check_in_ball(name, attack, xb, x_adv)
            survived[chunk] = (predict(self.model, x_adv) == yb).cpu()
        return survived


def evaluate(model: nn.Module, x: Tensor, y: Tensor, eps: float,
             attacks: Sequence[str] = DEFAULT_ATTACKS, batch_size: int = 256, seed: int = 0,
             backend: str = "auto", progress: bool = True, desc: Optional[str] = None,
             independent: bool = False) -> EvalResult:
    """Evaluate ``model`` on (x, y) (on any device; batches move to the model's device);
    see the module docstring for what the rows mean."""
    names = parse_attack_list(attacks)
    attack_names = [n for n in names if n not in (CLEAN, WORST)]
    built = {n: build_attack(n, eps, seed=seed, backend=backend) for n in attack_names}
    bar = progress_display.bar(1 + len(built), desc or "eval", enabled=progress)
    runner = _Runner(model, x, y, batch_size, bar)
    seconds: Dict[str, float] = {}
    with eval_mode(model):
        began = time.perf_counter()
        masks = {CLEAN: runner.clean()}
        seconds[CLEAN] = time.perf_counter() - began
        robust = masks[CLEAN].clone()
        for name, attack in built.items():
            began = time.perf_counter()
            masks[name] = runner.survivors(name, attack, masks[CLEAN] if independent else robust)
            seconds[name] = time.perf_counter() - began
            robust &= masks[name]
    bar.close()
    if WORST in names:
        masks[WORST] = robust
    return EvalResult(float(eps), seed, names, masks, seconds, independent)


def eps_sweep(model: nn.Module, x: Tensor, y: Tensor, eps_values: Sequence[float],
              attacks: Sequence[str] = DEFAULT_ATTACKS, **kwargs) -> Dict[float, float]:
    """Worst-case robust accuracy over ``attacks`` at each radius in ``eps_values``.

    At ε = 0 the ball is {x}: the clean accuracy, no attack runs. The radii run in
    increasing order and each attacks only the examples still robust at the previous one:
    the balls are nested inside one box, so an input that fools the model within a smaller
    ε does so within every larger one (the curve is non-increasing by construction)."""
    clean = evaluate(model, x, y, 0.0, [CLEAN], **kwargs).correct[CLEAN]
    robust, curve = clean.clone(), {}
    for eps in sorted(set(map(float, eps_values))):
        idx = robust.nonzero().squeeze(1)
        if eps > 0 and idx.numel() > 0:
            result = evaluate(model, x[idx], y[idx], eps, list(attacks) + [WORST], **kwargs)
            robust[idx] = result.correct[WORST]
        curve[eps] = float(robust.double().mean())
    return {float(e): curve[float(e)] for e in eps_values}
