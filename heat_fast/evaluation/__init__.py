"""Robustness evaluation: per-attack and worst-case accuracy, tables, eval.json, ε-sweep plots."""
from heat_fast.evaluation.checkpoints import Checkpoint, CheckpointError
from heat_fast.evaluation.eval_json import write_json
from heat_fast.evaluation.plot import plot_eps_sweep
from heat_fast.evaluation.report import format_table
from heat_fast.evaluation.robustness import (
    AUTOATTACK_EQUIVALENT, CLEAN, DEFAULT_ATTACKS, QUICK_ATTACKS, WORST, EvalResult,
    attack_set_name, eps_sweep, evaluate, parse_attack_list,
)
from heat_fast.evaluation.session import (
    CheckpointReport, Settings, evaluate_checkpoints, table, write_outputs,
)

__all__ = [
    "Checkpoint", "CheckpointError", "CheckpointReport", "Settings", "evaluate_checkpoints",
    "table", "write_outputs", "AUTOATTACK_EQUIVALENT", "CLEAN", "DEFAULT_ATTACKS", "QUICK_ATTACKS",
    "WORST", "EvalResult", "attack_set_name", "eps_sweep", "evaluate", "format_table",
    "parse_attack_list", "plot_eps_sweep", "write_json",
]
