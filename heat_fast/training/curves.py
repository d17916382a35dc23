"""training_curves.png: loss, accuracies and learning rate per epoch of a run (needs matplotlib)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

ACCURACY_KEYS = ("train_adv_acc", "train_clean_acc", "test_clean_acc", "test_pgd_acc",
                 "val_clean_acc", "val_pgd_acc")


def _series(records: Sequence[dict], key: str) -> Dict[str, List[float]]:
    points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return {"epoch": [e for e, _ in points], "value": [v for _, v in points]}


def plot_training_curves(records: Sequence[dict], path: Path, title: str = "") -> Path:
    """Write a PNG with three panels (train loss; accuracies in %; lr) from metrics.jsonl
    records. Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(13, 3.6))
    loss = _series(records, "loss")
    loss_ax.plot(loss["epoch"], loss["value"], marker="o")
    loss_ax.set_title("training loss")
    for key in ACCURACY_KEYS:
        series = _series(records, key)
        if series["epoch"]:
            acc_ax.plot(series["epoch"], [100 * v for v in series["value"]], marker="o",
                        label=key.replace("_acc", "").replace("_", " "))
    acc_ax.set_title("accuracy (%)")
    acc_ax.set_ylim(0, 100)
    acc_ax.legend(fontsize="small")
    lr = _series(records, "lr")
    lr_ax.plot(lr["epoch"], lr["value"], marker="o")
    lr_ax.set_title("learning rate (last batch of the epoch)")
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
