"""The World protocol: what a simulated lab runs, for every kind of campaign.

A world offers `candidates` (labels it can run) and answers `measure(labels)` with a `Measurement` per
label: a response over its `readouts` (a pooled screen: one readout, the gene's score; Perturb-seq: the
pseudobulk LFC over the readout genes; a pair screen: the pair phenotype) or a failure with its reason.
Its truth (`truth`, and for response worlds `de_genes`, `expressed`) is for scoring only and never reaches
a policy: the campaign reaches a world only through a lab adapter (lab_adapters.SimulatorLab).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Measurement:
    """One run of one perturbation: its response (a vector over the world's readouts), or why it failed."""

    response: np.ndarray | None
    error: str | None = None
    replicates: tuple[float, ...] = ()

    @classmethod
    def failed(cls, reason: str) -> Measurement:
        return cls(None, reason)

    @property
    def ok(self) -> bool:
        return self.response is not None


def top_by_magnitude(scores: pd.Series, fraction: float) -> pd.Series:
    """|scores| of the top `fraction` (at least one) by |score|, largest first, ties in index order: a world's
    hits (evaluation only)."""
    ranked = scores.abs().sort_values(ascending=False, kind="stable")
    return ranked.iloc[:max(1, int(round(fraction * len(ranked))))]


@runtime_checkable
class World(Protocol):
    """`readouts`: the names of a response's entries; `candidates`: the labels it can run;
    `measure(labels)`: a `Measurement` per label."""

    @property
    def readouts(self) -> list[str]: ...

    @property
    def candidates(self) -> list[str]: ...

    def measure(self, labels: Sequence[str]) -> dict[str, Measurement]: ...


class OneReadoutWorld:
    """What a one-readout response world without cells shares (`PairFitnessWorld`, `PairScreenWorld`):
    `readouts` = `genes` (the readout's name), no control expression, and its readout (index 0) as every
    perturbation's DE gene and the expressed gene. A subclass sets `genes` and `readouts` and defines the rest."""

    synthetic = False
    genes: list[str]
    readouts: list[str]

    def control_expression(self) -> None:
        return None

    def de_genes(self, labels: Sequence[str], n: int | None = None) -> list[list[int]]:
        return [[0] for _ in labels]

    def expressed(self, n: int) -> list[int]:
        return [0]
