"""A pair screen read from a user's file, replayed as a one-readout pair world (world kind ``pair_screen``).

File formats (CSV, or tab-separated for ``.tsv`` / ``.txt``; column names in any case):

- ``gene_a,gene_b,score``: one pair a row; a row with an empty ``gene_b`` is a single gene.
- ``<label>,score``: one label column (``label``, ``pair`` or ``perturbation``, or the only other column)
  holding ``A+B`` (a pair) or ``A`` (a single gene).

Labels are canonicalised (perturbloop.perturbation.canonical_label: ``B+A`` == ``A+B``, upper case). Pair
rows are the design space and their ``score`` is what a run measures; single-gene rows, where present, are
known up front (the additive prior ``s_A + s_B`` and the singles' features of a pair, as in the Norman
replay). A pair listed twice with the same score is kept once; with different scores it is an error naming
the pair and both lines.

Hits (evaluation only): the pairs of a hits file (one ``A+B`` a line), else the top `hit_fraction` of the
pairs by |score| (perturbloop.response_metrics.prepare_evaluation).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from perturbloop.errors import ScreenFormatError, shown
from perturbloop.perturbation import canonical_label
from perturbloop.perturbseq import UnknownPerturbationError
from simulators.world import Measurement, OneReadoutWorld

LABEL_COLUMNS = ("label", "pair", "perturbation")
HITS_HEADERS = ("pair", "pairs", "hit", "hits", "label")


@dataclass(frozen=True)
class PairScreen:
    """A pair screen file's content: `pairs` (label ``A+B`` -> score) and `singles` (gene -> score)."""

    name: str
    pairs: pd.Series
    singles: pd.Series


def _parse_label(raw: str, where: str) -> str:
    """The canonical label of ``A+B`` or ``A``; anything else (empty, 3+ genes, ``A+A``) names `where`."""
    parts = [p.strip() for p in str(raw).split("+")]
    canon = canonical_label(raw)
    if not all(parts) or len(parts) > 2 or canon is None or canon.count("+") != len(parts) - 1:
        raise ScreenFormatError(f"{where}: malformed label {raw!r} (expected a pair A+B of two different genes, "
                                "or one gene)")
    return canon


def _separator(path: Path) -> str:
    return "\t" if path.suffix.lower() in (".tsv", ".txt") else ","


def is_pair_screen_file(path: str | os.PathLike) -> bool:
    """Whether a screen file is a pair screen: ``gene_a`` and ``gene_b`` columns, or labels with ``+``."""
    p = Path(path).expanduser()
    if not p.is_file():
        return False
    head = pd.read_csv(p, sep=_separator(p), dtype=str, nrows=50, keep_default_na=False, encoding="utf-8-sig")
    cols = [c.strip().lower() for c in head.columns]
    if {"gene_a", "gene_b"} <= set(cols):
        return True
    return any("+" in str(v) for c in head.columns for v in head[c])


def read_pair_screen(path: str | os.PathLike) -> PairScreen:
    """Read a pair screen file (module docstring); raises ScreenFormatError naming the column, line or pair."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ScreenFormatError(f"pair screen file {str(path)!r} does not exist")
    df = pd.read_csv(p, sep=_separator(p), dtype=str, keep_default_na=False, encoding="utf-8-sig")
    cols = {c.strip().lower(): c for c in df.columns}
    if "score" not in cols:
        raise ScreenFormatError(f"{p.name}: no 'score' column (columns: {', '.join(map(str, df.columns))}); expected "
                                "gene_a,gene_b,score or a label column (A+B) and score")
    if "gene_a" in cols or "gene_b" in cols:
        if not {"gene_a", "gene_b"} <= set(cols):
            raise ScreenFormatError(f"{p.name}: has {'gene_a' if 'gene_a' in cols else 'gene_b'} but not "
                                    f"{'gene_b' if 'gene_a' in cols else 'gene_a'}; a pair needs both columns")
        a, b = df[cols["gene_a"]].str.strip(), df[cols["gene_b"]].str.strip()
        raw = [f"{x}+{y}" if y else x for x, y in zip(a, b)]
    else:
        named = [cols[c] for c in LABEL_COLUMNS if c in cols]
        others = [c for c in df.columns if c != cols["score"]]
        label_col = named[0] if named else (others[0] if len(others) == 1 else None)
        if label_col is None:
            raise ScreenFormatError(f"{p.name}: no label column (columns: {', '.join(map(str, df.columns))}); name it "
                                    "'label' (A+B) or give gene_a,gene_b columns")
        raw = list(df[label_col])
    seen: dict[str, tuple[int, float]] = {}
    score = df[cols["score"]]
    for line, lab, s, value in zip(range(2, len(df) + 2), raw, score, pd.to_numeric(score, errors="coerce")):
        where = f"{p.name} line {line}"  # line 1 is the header
        canon = _parse_label(lab, where)
        if not math.isfinite(value):
            raise ScreenFormatError(f"{where}: score {s!r} of {canon} is not a finite number")
        if canon not in seen:
            seen[canon] = (line, float(value))
        elif not math.isclose(seen[canon][1], value, rel_tol=1e-9, abs_tol=1e-12):
            raise ScreenFormatError(f"{p.name}: {canon} is listed twice with different scores: line {seen[canon][0]} "
                                    f"({seen[canon][1]:g}) and line {line} ({value:g})")
    pairs = pd.Series({k: v for k, (_, v) in seen.items() if "+" in k}, dtype=float).sort_index()
    singles = pd.Series({k: v for k, (_, v) in seen.items() if "+" not in k}, dtype=float).sort_index()
    if len(pairs) < 2:
        raise ScreenFormatError(f"{p.name}: {len(pairs)} gene pair(s); a pair screen needs at least two")
    pairs.index.name = "perturbation"
    return PairScreen(p.stem, pairs, singles)


def read_pair_hits(path: str | os.PathLike, pairs: Sequence[str]) -> frozenset[str]:
    """The hit pairs a file lists (one ``A+B`` a line, `#` comments and a header skipped), canonicalised; each
    must be a pair of the screen (else ScreenFormatError naming them)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ScreenFormatError(f"--hits: file {str(path)!r} does not exist")
    rows = [(i + 1, line.split(",")[0].strip()) for i, line in enumerate(p.read_text().splitlines())
            if line.strip() and not line.lstrip().startswith("#")]
    if rows and rows[0][1].lower() in HITS_HEADERS:
        rows = rows[1:]
    if not rows:
        raise ScreenFormatError(f"--hits: {p.name} lists no pairs")
    hits = []
    for line, raw in rows:
        canon = _parse_label(raw, f"--hits {p.name} line {line}")
        if "+" not in canon:
            raise ScreenFormatError(f"--hits {p.name} line {line}: {raw!r} is one gene; hits of a pair screen are pairs A+B")
        hits.append(canon)
    inside = set(pairs)
    outside = sorted({h for h in hits if h not in inside})
    if outside:
        raise ScreenFormatError(f"--hits {p.name}: {len(outside)} pair(s) not in the screen file: {shown(outside, 10)}")
    return frozenset(hits)


class PairScreenWorld(OneReadoutWorld):
    """A `PairScreen` seen as one-readout responses (the interface of `PairFitnessWorld`).

    A run of a pair returns its score; singles (known up front) are the single-gene rows. The score is
    the objective as it is (no offset: `offset_prior` is False; the singles' sum is a feature). `hits`: the
    hits file's pairs, or None (top fraction by |score|).
    """

    offset_prior = False

    def __init__(self, screen: PairScreen, hits: frozenset[str] | None = None):
        self.screen = screen
        self.name = screen.name
        self.genes = self.readouts = ["score"]
        self.candidates = list(screen.pairs.index)
        self.hits = hits

    @classmethod
    def from_file(cls, path: str | os.PathLike, hits: str | os.PathLike | None = None) -> PairScreenWorld:
        screen = read_pair_screen(path)
        return cls(screen, read_pair_hits(hits, screen.pairs.index) if hits else None)

    def measure(self, labels: Sequence[str]) -> dict[str, Measurement]:
        canon = [canonical_label(x) or "" for x in labels]
        unknown = [str(x) for x, c in zip(labels, canon) if c not in self.screen.pairs.index]
        if unknown:
            raise UnknownPerturbationError(unknown, self.name, f"{len(self.screen.pairs)} pairs in the file")
        return {c: Measurement(np.array([float(self.screen.pairs[c])])) for c in canon}

    def singles(self) -> dict[str, np.ndarray]:
        return {g: np.array([float(v)]) for g, v in self.screen.singles.items()}

    def truth(self, labels: Sequence[str]) -> np.ndarray:
        return self.screen.pairs.reindex(list(labels)).to_numpy(dtype=np.float64).reshape(-1, 1)
