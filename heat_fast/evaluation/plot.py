"""The ε-sweep figure: worst-case robust accuracy against ε, one curve per checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping


def plot_eps_sweep(curves: Mapping[str, Mapping[float, float]], path: Path,
                   title: str = "worst-case robust accuracy") -> Path:
    """Write a PNG of accuracy (%) vs ε·255 for each {label: {eps: accuracy}}."""
    import matplotlib  # here, not at import: matplotlib costs ~0.3 s to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, points in curves.items():
        eps = sorted(points)
        ax.plot([e * 255 for e in eps], [100 * points[e] for e in eps], marker="o", label=label)
    ax.set_xlabel("ε (× 1/255, L∞)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
