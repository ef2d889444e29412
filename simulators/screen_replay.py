"""Replay of a pooled screen: a gene's readout is revealed only when that gene is run.

Noise modes:
  * ``"none"``: the readout is the screen's score (mean over donors/replicates), the
    published BioDiscoveryAgent / GeneDisco protocol.
  * ``"donor"``: each run measures one donor (replicate), drawn with a seeded generator per
    gene, so the donors' disagreement acts as measurement noise; hits are still judged on the
    donor average.

The truth (`objective_truth`, `hits`) is for scoring a simulated campaign only; policies
never see it (the agent reaches the world only through a lab adapter).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from perturbloop.data.screens import Screen
from simulators.world import Measurement, top_by_magnitude


@dataclass
class ScreenReading:
    perturbation: str
    value: float | None
    replicates: list[float] = field(default_factory=list)
    error: str | None = None


class ScreenReplay:
    """Holds a screen back and answers runs of single-gene perturbations (see module docstring)."""

    kind = "screen"

    def __init__(self, screen: Screen, *, noise: Literal["none", "donor"] = "none", hit_fraction: float = 0.05,
                 seed: int = 0, exclude_from_hits: set[str] | None = None, hits: set[str] | None = None):
        if noise == "donor" and (screen.replicates is None or screen.replicates.shape[1] < 2):
            raise ValueError(f"screen {screen.name!r} has no replicates: noise='donor' needs at least two")
        self.screen = screen
        self.name = screen.name
        self.genes = self.candidates = screen.genes
        self.noise = noise
        self.seed = seed
        scores = screen.scores
        if exclude_from_hits:
            scores = scores.drop(index=[g for g in exclude_from_hits if g in scores.index])
        # the hits (evaluation only): a given hit list (e.g. the paper's) replaces the top-fraction rule
        self.hits = frozenset(top_by_magnitude(scores, hit_fraction).index if hits is None else hits)
        # smallest |score| among the hits (evaluation only)
        size = scores.abs()
        self.hit_threshold = float(size[size.index.isin(list(self.hits))].min()) if self.hits else float("nan")

    readouts = ["score"]  # a pooled screen's response: one readout per gene

    def measure(self, labels: Sequence[str]) -> dict[str, Measurement]:
        """The World protocol: each gene's readout as a length-1 response, with the screen's replicates."""
        return {r.perturbation: Measurement.failed(r.error or "no readout") if r.value is None
                else Measurement(np.array([r.value]), None, tuple(r.replicates)) for r in self.run(labels)}

    def run(self, perturbations: Sequence[str]) -> list[ScreenReading]:
        return [self._read(label) for label in perturbations]

    def _read(self, label: str) -> ScreenReading:
        if "+" in label:
            return ScreenReading(label, None, error="pooled-screen replay runs single genes only")
        if label not in self.screen.scores.index:
            return ScreenReading(label, None, error=f"gene {label} was not measured in screen {self.name}")
        reps = [] if self.screen.replicates is None else [float(v) for v in self.screen.replicates.loc[label]]
        if self.noise == "none":
            return ScreenReading(label, float(self.screen.scores.loc[label]), reps)
        # per-gene seeded draw of one donor: the same gene gives the same donor in every (re)run
        donor = np.random.default_rng([self.seed, zlib.crc32(label.encode())]).integers(len(reps))
        return ScreenReading(label, reps[int(donor)], reps)

    def truth(self, perturbations: Sequence[str]) -> pd.Series:
        """True scores (evaluation only)."""
        return self.screen.scores.reindex(list(perturbations))
