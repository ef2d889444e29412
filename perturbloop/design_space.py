"""Design spaces for response campaigns: single genes, and gene pairs at scale (up to ~1M candidates).

A `DesignSpace` is what a response surrogate and policy see: `n` candidate perturbations, a
feature row per candidate and, for pairs, a known prior per candidate (the additive prediction).
It never holds an `n x d` feature matrix for pairs: rows are built per chunk from the genes'
features, so memory is bounded by the chunk size, not the number of pairs.

Pair features (symmetric pooling: `f(a, b) = f(b, a)`), for genes `a`, `b` with feature rows
`g_a`, `g_b` (`d` columns):

    `[g_a + g_b, g_a * g_b (, max(g_a, g_b))]`   plus, once single-gene responses are known,
    `[z_a + z_b, z_a * z_b]`, `z` = the singles' LFC on their top-`k` principal directions.

`z_a + z_b` is the additive prior in PC coordinates (the additive prediction itself is
`offset(a+b) = y_a + y_b`, passed to the surrogate as an offset; the model learns the interaction
on top of it); `z_a * z_b` says whether the two genes move the same programs (where buffering
and synergy live). A gene whose single response is unknown gets `z = 0` and contributes 0 to the
offset; a `singles_known` count feature (0, 1, 2) says so.

`top_k` scores any space in chunks and keeps a running top-`k` (bounded memory, any device).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch

from perturbloop.perturbation import Perturbation

PAIR_CHUNK = 16_384  # candidates per chunk: 16k x ~300 features x 8 B = ~40 MB per feature block
PRIOR_RANK = 8  # PCs of the single-gene responses used as pair features
Pooling = Literal["sum", "prod", "max"]


@runtime_checkable
class DesignSpace(Protocol):
    """Candidates a response campaign may run.

    `labels`: the `n` candidate labels in order; `labels_at(idx)` those of some indices, `indices(labels)`
    the reverse (a LongTensor; a label outside the space is a KeyError naming it);
    `features(idx)`: `c x D` float64 rows for a `c` LongTensor of candidate indices;
    `offset(idx)`: `c x G` known prior responses, or None (singles).
    """

    kind: str
    genes: list[str]

    def __len__(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def label(self, i: int) -> str: ...

    @property
    def labels(self) -> list[str]: ...

    def labels_at(self, idx: torch.Tensor | Sequence[int]) -> list[str]: ...

    def indices(self, labels: Sequence[str]) -> torch.Tensor: ...

    def features(self, idx: torch.Tensor) -> torch.Tensor: ...

    def offset(self, idx: torch.Tensor) -> torch.Tensor | None: ...


def chunks(n: int, chunk: int = PAIR_CHUNK) -> Iterator[torch.Tensor]:
    """Consecutive index ranges `[start, start + chunk)` covering `0..n-1`, as LongTensors."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    for start in range(0, n, chunk):
        yield torch.arange(start, min(start + chunk, n))


class SingleSpace:
    """Single-gene perturbations with a precomputed `n x d` feature matrix (no offset): the design space of a
    pooled screen (the `G = 1` case) and of a Perturb-seq campaign over single genes.

    Attributes:
        labels: the `n` perturbation labels, in order (unique).
        X: `n x d` float64 features (CPU; moved to the model's device by surrogates).
        feature_names: `d` names.
        index: label -> row.
    """

    kind = "genes"

    def __init__(self, genes: Sequence[str | Perturbation], X: torch.Tensor, feature_names: Sequence[str] = ()):
        self.perturbations = [g if isinstance(g, Perturbation) else Perturbation((g,)) for g in genes]
        self.labels: list[str] = [p.label for p in self.perturbations]
        if X.ndim != 2 or X.shape[0] != len(self.labels):
            raise ValueError(f"X must be n x d with n={len(self.labels)}, got {tuple(X.shape)}")
        self.X = X.to(torch.float64)
        self.feature_names = list(feature_names)
        self.index: dict[str, int] = {lab: i for i, lab in enumerate(self.labels)}
        if len(self.index) != len(self.labels):
            raise ValueError("duplicate perturbations in the design space")

    @property
    def genes(self) -> list[str]:
        return self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: str) -> bool:
        return label in self.index

    @property
    def dim(self) -> int:
        return self.X.shape[1]

    def label(self, i: int) -> str:
        return self.labels[i]

    def labels_at(self, idx) -> list[str]:
        return [self.labels[int(i)] for i in idx]

    def indices(self, labels: Sequence[str]) -> torch.Tensor:
        missing = [lab for lab in labels if lab not in self.index]
        if missing:
            raise KeyError(f"not in the design space: {', '.join(missing[:20])}")
        return torch.tensor([self.index[lab] for lab in labels], dtype=torch.long)

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        return self.X[idx]

    def offset(self, idx: torch.Tensor) -> None:
        return None

    def subset(self, idx: Sequence[int]) -> SingleSpace:
        return SingleSpace([self.perturbations[i] for i in idx], self.X[list(idx)], self.feature_names)


class PairSpace:
    """Gene pairs with pooled features and the additive prior (see module docstring).

    Args:
        genes: the `n` genes pairs are made of (upper-case symbols).
        gene_X: `n x d` gene features (may have 0 columns).
        pairs: candidate pairs as labels (`A+B`) or an `m x 2` LongTensor of gene indices;
            None = all `n (n - 1) / 2` pairs.
        singles: `n x G` single-gene responses (NaN rows = not known yet), or None.
        pooling: which symmetric poolings of the gene features to use.
        prior_rank: PCs of the singles used as features.
        use_offset: whether the additive prediction is the offset (False when the response is
            already a deviation from additivity, e.g. a GI score; the singles stay features).
        device: where features are built (the surrogate's device: CUDA when present).
    """

    kind = "pairs"

    def __init__(self, genes: Sequence[str], gene_X: torch.Tensor, pairs: Sequence[str] | torch.Tensor | None = None,
                 singles: torch.Tensor | None = None, *, pooling: Sequence[Pooling] = ("sum", "prod"),
                 prior_rank: int = PRIOR_RANK, use_offset: bool = True, device: torch.device | str | None = None):
        self.genes = [Perturbation((g,)).label for g in genes]
        self._labels: list[str] | None = None
        self._gidx = {g: i for i, g in enumerate(self.genes)}
        if len(self._gidx) != len(self.genes):
            raise ValueError("duplicate genes in the pair space")
        n = len(self.genes)
        if gene_X.ndim != 2 or gene_X.shape[0] != n:
            raise ValueError(f"gene_X must be n x d with n={n}, got {tuple(gene_X.shape)}")
        bad = [p for p in pooling if p not in ("sum", "prod", "max")]
        if bad or not pooling:
            raise ValueError(f"pooling must be a non-empty subset of sum, prod, max; got {list(pooling)}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.gene_X = gene_X.to(self.device, torch.float64)
        self.pooling = tuple(pooling)
        self.prior_rank = prior_rank
        self.use_offset = use_offset
        if pairs is None:
            self.pairs = torch.triu_indices(n, n, 1).T.contiguous()
        elif isinstance(pairs, torch.Tensor):
            self.pairs = torch.sort(pairs.to(torch.long), dim=1).values
        else:
            self.pairs = self._parse(pairs)
        if self.pairs.numel() and (self.pairs[:, 0] == self.pairs[:, 1]).any():
            raise ValueError("a pair needs two different genes")
        keys = self.pairs[:, 0] * n + self.pairs[:, 1]
        self._keys, self._order = torch.sort(keys)
        if self._keys.numel() > 1 and (self._keys[1:] == self._keys[:-1]).any():
            raise ValueError("duplicate pairs in the design space")
        self.set_singles(singles)

    def _parse(self, labels: Sequence[str]) -> torch.Tensor:
        out, missing = [], []
        for lab in labels:
            p = Perturbation.parse(lab)
            if len(p.genes) != 2:
                raise ValueError(f"{lab!r} is not a gene pair")
            idx = [self._gidx.get(g) for g in p.genes]
            if None in idx:
                missing += [g for g, i in zip(p.genes, idx) if i is None]
                continue
            out.append(sorted(idx))
        if missing:
            raise KeyError(f"pair genes not in the pair space: {', '.join(sorted(set(missing))[:20])}")
        return torch.tensor(out, dtype=torch.long).reshape(-1, 2)

    def set_singles(self, singles: torch.Tensor | None) -> None:
        """Single-gene responses (`n x G`, NaN rows unknown): the additive prior and its PC features."""
        n = len(self.genes)
        self.singles = self.known = self._z = None
        self._sw_w: torch.Tensor | None = None  # offset_score's cache: the weights it was computed for
        if singles is None:
            return
        if singles.ndim != 2 or singles.shape[0] != n:
            raise ValueError(f"singles must be n x G with n={n}, got {tuple(singles.shape)}")
        S = singles.to(torch.float64)
        known = ~torch.isnan(S).any(1)
        S = torch.where(known.unsqueeze(1), S, torch.zeros_like(S))
        z = torch.zeros(n, 0, dtype=torch.float64)
        if int(known.sum()) >= 2:
            Sk = S[known]
            center = Sk.mean(0)
            _, sv, Vt = torch.linalg.svd(Sk - center, full_matrices=False)
            k = min(self.prior_rank, int((sv > 1e-8 * sv[0].clamp_min(1e-12)).sum()))
            z = torch.where(known.unsqueeze(1), (S - center) @ Vt[:k].T, torch.zeros(n, k, dtype=torch.float64))
        self.singles = S.to(self.device)
        self.known = known.to(self.device, torch.float64)
        self._z = z.to(self.device)

    def __len__(self) -> int:
        return self.pairs.shape[0]

    @property
    def dim(self) -> int:
        d = self.gene_X.shape[1] * len(self.pooling)
        if self._z is not None:
            d += 2 * self._z.shape[1] + 1
        return d

    @property
    def feature_names(self) -> list[str]:
        names = [f"{p}_g{j}" for p in self.pooling for j in range(self.gene_X.shape[1])]
        if self._z is not None:
            k = self._z.shape[1]
            names += [f"prior_{p}_pc{j}" for p in ("sum", "prod") for j in range(k)] + ["singles_known"]
        return names

    def label(self, i: int) -> str:
        return self.labels_at([i])[0]

    @property
    def labels(self) -> list[str]:
        """Every candidate pair's label (built on first use: ~1M strings for the largest spaces)."""
        if self._labels is None:
            self._labels = self.labels_at(range(len(self)))
        return self._labels

    def labels_at(self, idx) -> list[str]:
        rows = self.pairs[torch.as_tensor(idx, dtype=torch.long)].tolist()
        return ["+".join(sorted((self.genes[a], self.genes[b]))) for a, b in rows]

    def indices(self, labels: Sequence[str]) -> torch.Tensor:
        n = len(self.genes)
        keys = []
        for lab in labels:
            idx = [self._gidx.get(g) for g in Perturbation.parse(lab).genes]
            keys.append(-1 if len(idx) != 2 or None in idx else min(idx) * n + max(idx))  # -1: never found
        keys_t = torch.tensor(keys, dtype=torch.long)
        pos = torch.searchsorted(self._keys, keys_t).clamp_max(max(len(self) - 1, 0))
        found = self._keys[pos] == keys_t if len(self) else torch.zeros_like(keys_t, dtype=torch.bool)
        missing = [lab for lab, f in zip(labels, found.tolist()) if not f]
        if missing:
            raise KeyError(f"not in the design space: {', '.join(missing[:20])}")
        return self._order[pos]

    def gene_pairs(self, idx: torch.Tensor) -> torch.Tensor:
        """`c x 2` gene indices of candidates `idx`."""
        return self.pairs[idx.to(torch.long).cpu()]

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        ab = self.gene_pairs(idx).to(self.device)
        a, b = ab[:, 0], ab[:, 1]
        ga, gb = self.gene_X[a], self.gene_X[b]
        blocks = [ga + gb if p == "sum" else ga * gb if p == "prod" else torch.maximum(ga, gb) for p in self.pooling]
        if self._z is not None:
            za, zb = self._z[a], self._z[b]
            blocks += [za + zb, za * zb, (self.known[a] + self.known[b]).unsqueeze(1)]
        return torch.cat(blocks, dim=1)

    def offset(self, idx: torch.Tensor) -> torch.Tensor | None:
        if self.singles is None or not self.use_offset:
            return None
        ab = self.gene_pairs(idx).to(self.device)
        return self.singles[ab[:, 0]] + self.singles[ab[:, 1]]

    def offset_score(self, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
        """`offset(idx) @ w` without the `c x G` offset: `(S w)[a] + (S w)[b]` (`c`)."""
        if self.singles is None or not self.use_offset:
            return None
        w = w.to(self.singles)
        # compared by value: a cache keyed on the tensor's address returned stale scores when a freed `w`'s memory
        # was reused for other weights
        if self._sw_w is None or self._sw_w.shape != w.shape or not torch.equal(self._sw_w, w):
            self._sw, self._sw_w = self.singles @ w, w.clone()
        ab = self.gene_pairs(idx).to(self.device)
        return self._sw[ab[:, 0]] + self._sw[ab[:, 1]]


def top_k(n: int, score: Callable[[torch.Tensor], torch.Tensor], k: int, *, chunk: int = PAIR_CHUNK,
          exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` best of `n` candidates by `score(idx) -> c` scores, computed chunk by chunk.

    Keeps a running top-`k` (memory ~ `chunk + k` scores whatever `n`); `exclude` is an `n` bool
    mask of candidates never returned. Returns (indices, scores), best first; ties keep the lower
    index (the same answer as scoring all candidates at once with a stable sort).
    """
    best_i = torch.zeros(0, dtype=torch.long)
    best_s = torch.zeros(0, dtype=torch.float64)
    for idx in chunks(n, chunk):
        s = score(idx).to("cpu", torch.float64).reshape(-1)
        if s.shape[0] != idx.shape[0]:
            raise ValueError(f"score returned {s.shape[0]} values for {idx.shape[0]} candidates")
        if exclude is not None:
            keep = ~exclude[idx]
            idx, s = idx[keep], s[keep]
        s = torch.nan_to_num(s, nan=-float("inf"))
        cand_i = torch.cat([best_i, idx])
        cand_s = torch.cat([best_s, s])
        # order by score desc, then index asc: stable sort on -score after sorting by index
        order = torch.argsort(cand_i, stable=True)
        cand_i, cand_s = cand_i[order], cand_s[order]
        order = torch.argsort(-cand_s, stable=True)[:k]
        best_i, best_s = cand_i[order], cand_s[order]
    return best_i, best_s


def gene_counts(space: PairSpace, picks: Sequence[int]) -> np.ndarray:
    """Per gene of the space, how many of the pairs `picks` use it."""
    counts = np.zeros(len(space.genes), dtype=int)
    if len(picks):
        ab = space.gene_pairs(torch.as_tensor(list(picks), dtype=torch.long)).numpy()
        np.add.at(counts, ab.ravel(), 1)
    return counts
