"""Perturbations and the candidate pool (the design space)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

# The control label (scPerturb/GEARS): lower case, so it never equals an upper-case HGNC symbol
# (CTRL is a real gene). Compare labels to it exactly, never case-insensitively.
CONTROL = "ctrl"


@dataclass(frozen=True, order=True)
class Perturbation:
    """A non-empty set of gene symbols; label = sorted symbols joined by ``+`` (GEARS/scPerturb)."""

    genes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.genes:
            raise ValueError("a perturbation needs at least one gene")
        canon = tuple(sorted({g.strip().upper() for g in self.genes}))
        if len(canon) != len(self.genes) or any(not g for g in canon):
            raise ValueError(f"invalid perturbation genes {self.genes!r} (empty or repeated symbol)")
        object.__setattr__(self, "genes", canon)

    @classmethod
    def parse(cls, label: str) -> Perturbation:
        """A label's perturbation; ``ctrl`` parts (GEARS ``A+ctrl``) are dropped, ``CTRL`` is the gene."""
        parts = [p for p in str(label).split("+") if p.strip() and p.strip() != CONTROL]
        return cls(tuple(parts))

    @property
    def label(self) -> str:
        return "+".join(self.genes)

    def __str__(self) -> str:
        return self.label


@dataclass
class CandidatePool:
    """The design space: ordered perturbations and their feature matrix.

    Attributes:
        perturbations: n perturbations, unique labels.
        X: `n x d` float64 features (CPU; moved to the model's device by surrogates).
        feature_names: d names.
        essential: optional n bools (core-essential genes), for the non-essential protocol.
    """

    perturbations: list[Perturbation]
    X: torch.Tensor
    feature_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.X.ndim != 2 or self.X.shape[0] != len(self.perturbations):
            raise ValueError(f"X must be n x d with n={len(self.perturbations)}, got {tuple(self.X.shape)}")
        self.labels: list[str] = [p.label for p in self.perturbations]
        self.index: dict[str, int] = {lab: i for i, lab in enumerate(self.labels)}
        if len(self.index) != len(self.labels):
            raise ValueError("candidate pool has duplicate perturbations")

    def __len__(self) -> int:
        return len(self.perturbations)

    def __contains__(self, label: str) -> bool:
        return label in self.index

    def indices(self, labels: Iterable[str]) -> list[int]:
        labels = list(labels)
        missing = [lab for lab in labels if lab not in self.index]
        if missing:
            raise KeyError(f"not in the design space: {', '.join(missing[:20])}")
        return [self.index[lab] for lab in labels]

    def subset(self, idx: Sequence[int]) -> CandidatePool:
        return CandidatePool([self.perturbations[i] for i in idx], self.X[list(idx)], self.feature_names)
