"""Hit-discovery curves (PNG)."""

from __future__ import annotations

from pathlib import Path


def plot_hit_curves(curves: dict[str, list[float]], batch_size: int, path: str | Path, title: str = "") -> Path:
    """Cumulative hit ratio vs genes tested, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    for name, ys in curves.items():
        xs = [batch_size * (i + 1) for i in range(len(ys))]
        ax.plot([0, *xs], [0.0, *ys], marker="o", label=name)
    ax.set_xlabel("genes tested")
    ax.set_ylabel("cumulative hit ratio")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
