"""Hit-discovery curves (PNG, and inline SVG for the web page); the figure helpers of every PNG written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """`fig` laid out, written to `path` (its folder made) and closed."""
    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    pyplot().close(fig)
    return path


def plot_hit_curves(curves: Mapping[str, Sequence[float]], batch_size: int, path: str | Path, title: str = "", *,
                    sd: Mapping[str, Sequence[float]] | None = None, figsize: tuple[float, float] = (5.5, 4)) -> Path:
    """Cumulative hit ratio vs genes tested, one line per policy (from 0 before round 1), `+- sd` shaded if given."""
    import numpy as np

    fig, ax = pyplot().subplots(figsize=figsize, dpi=120)
    for name, ys in curves.items():
        xs = batch_size * np.arange(len(ys) + 1)
        mean = np.array([0.0, *ys])
        ax.plot(xs, mean, marker="o", label=name)
        if sd is not None:
            s = np.array([0.0, *sd[name]])
            ax.fill_between(xs, mean - s, mean + s, alpha=0.2)
    ax.set(xlabel="genes tested", ylabel="cumulative hit ratio", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


HIT_CURVE_VIEWBOX = (480, 200)  # SVG user units; the drawing scales to its container's width


def hit_curve_svg(hits_so_far: list[int], *, caption: str = "hits found so far") -> str:
    """The hits found so far after each measured round as an inline SVG (a line from 0 before round 1).

    Scales to the page (`viewBox`, `width="100%"`); every point carries its numbers (`data-round`,
    `data-hits` and a `<title>` tooltip), so the page shows them without scripts."""
    from html import escape

    w, h = HIT_CURVE_VIEWBOX
    left, right, top, bottom = 40, 12, 14, 30
    n, ymax = len(hits_so_far), max([1, *hits_so_far])

    def xy(i: int, v: int) -> tuple[float, float]:
        return (left + (w - left - right) * i / max(1, n), h - bottom - (h - top - bottom) * v / ymax)

    pts = [xy(0, 0), *(xy(i + 1, v) for i, v in enumerate(hits_so_far))]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    (x0, y0), (x1, y1) = pts[0], xy(n, ymax)
    out = [(f'<svg id="hit-curve" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" '
            f'preserveAspectRatio="xMinYMin meet" role="img" aria-label="{escape(caption)}" '
            f'style="max-width:{w * 2}px;height:auto">'),
           f'<title>{escape(caption)}</title>',
           f'<path d="M{x0:.1f},{y1:.1f} V{y0:.1f} H{x1:.1f}" fill="none" stroke="#888" stroke-width="1"/>',
           f'<text x="{x0 - 6:.1f}" y="{y0:.1f}" font-size="10" text-anchor="end">0</text>',
           f'<text x="{x0 - 6:.1f}" y="{y1 + 4:.1f}" font-size="10" text-anchor="end">{ymax}</text>',
           f'<text x="{(x0 + x1) / 2:.1f}" y="{h - 4}" font-size="11" text-anchor="middle">round</text>',
           f'<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="2"/>']
    for i, ((x, y), v) in enumerate(zip(pts[1:], hits_so_far), start=1):
        out.append(f'<text x="{x:.1f}" y="{y0 + 14:.1f}" font-size="10" text-anchor="middle">{i}</text>')
        out.append(f'<circle class="hit-point" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#1f77b4" data-round="{i}" '
                   f'data-hits="{v}"><title>round {i}: {v} hits so far</title></circle>')
    out.append("</svg>")
    return "\n".join(out)
