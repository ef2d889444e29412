"""Perturbations and their canonical labels."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


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
        """A label's perturbation (`canonical_label`); ``ctrl`` parts (GEARS ``A+ctrl``) are dropped."""
        canon = canonical_label(label)
        if canon is None or canon == CONTROL:
            raise ValueError(f"{label!r} names no gene (empty, or the control)")
        return cls(tuple(canon.split("+")))

    @property
    def label(self) -> str:
        return "+".join(self.genes)

    def __str__(self) -> str:
        return self.label


def label_set(control: str | Iterable[str] | None) -> set[str]:
    if control is None:
        return set()
    if isinstance(control, str):
        return {control}
    return {str(c) for c in control}


def canonical_label(
    raw: object,
    *,
    control: str | Iterable[str] = CONTROL,
    separators: str = "+",
    symbol_map: Mapping[str, str] | None = None,
) -> str | None:
    """The canonical label of one label (a data set's, a lab's, a scientist's): ``ctrl`` for control, None for
    a missing label. The one canonicaliser of the project.

    Genes are split on any character of `separators`, control parts (GEARS ``A+ctrl``) dropped,
    symbols upper-cased (and mapped through `symbol_map` when given), de-duplicated and sorted.
    ``ctrl`` is the control only in lower case (``CTRL`` is the gene CTRL); a source's own control
    labels (`control`, e.g. ``non-targeting``) match in any case.

    Example:
        >>> canonical_label("MAP2K6_klf1", separators="_+")
        'KLF1+MAP2K6'
        >>> canonical_label("non-targeting", control="non-targeting")
        'ctrl'
    """
    s = str(raw).strip()
    if not s or s.lower() in {"nan", "none"}:  # also None and a float NaN
        return None
    extra = {c.lower() for c in label_set(control) if c != CONTROL}

    def is_control(part: str) -> bool:
        return part == CONTROL or part.lower() in extra

    if is_control(s):
        return CONTROL
    parts = re.split("[" + re.escape(separators) + "]", s) if separators else [s]
    genes = {p.strip().upper() for p in parts if p.strip() and not is_control(p.strip())}
    if symbol_map:
        genes = {symbol_map.get(g, g) for g in genes}
    if not genes:
        return CONTROL
    return "+".join(sorted(genes))


def lab_label(raw: object) -> str:
    """A label a lab sent back (a result row, an ``.h5ad`` cell), as perturbloop writes it: `canonical_label`
    with ``;`` read as ``+`` too; an empty label stays empty (no perturbation matches it)."""
    return canonical_label(raw, separators="+;") or ""
