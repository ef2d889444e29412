"""Policies for response campaigns (objective `learn_response`, and `maximize` a gene-program score).

They follow the `AcquisitionPolicy` protocol (`select(surrogate, space, observed, batch_size,
pending) -> Proposal`) over a `perturbloop.design_space.DesignSpace` (single genes, or up to ~1M gene
pairs scored in chunks) with a `ResponseSurrogate`; `observed` maps measured labels to their
response vectors (only the keys matter for availability).

`random` (the baseline every curve is shown beside) and `diversity` (greedy k-center, `coreset`) are
the policies of every campaign (acquisition.random, acquisition.coreset).

- `uncertainty`: the largest total predictive variance over genes, `tr Sigma(x) = sum_g var_g(x)`
  (ensemble disagreement, or GP posterior variance in the low-rank output space; IterPert's BALD
  baseline is the same idea). Pair batches cap how often one gene may appear (`max_per_gene`),
  otherwise one uncertain gene fills the whole batch with its pairs.
- `program` (objective `maximize`): UCB on a gene-program score `s = w . y`,
  `a(x) = mu_s(x) + sqrt(beta) sigma_s(x)`; with `interaction=True` the score is taken on
  `y - offset` (the deviation from the additive prior, i.e. a genetic interaction), and with
  `absolute=True` on `|s|` (`|mu_s| + sqrt(beta) sigma_s`): find the strongest interactions
  of either sign.

All pick without replacement and never pick observed or pending candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from acquisition.base import Proposal, check_batch, make_items, predicted, taken_mask
from perturbloop.design_space import PAIR_CHUNK, DesignSpace, top_k
from perturbloop.errors import ConfigError

SHORTLIST_FACTOR = 8  # pair batches with a per-gene cap choose from the top factor x q by score


def capped_batch(space: DesignSpace, order: Sequence[int], q: int, max_per_gene: int | None,
                 strict: bool = False) -> list[int] | None:
    """The first `q` of `order`, skipping pairs whose genes already appear `max_per_gene` times.

    When the cap cannot be met from `order`: None if `strict` (the caller widens `order`), else
    the batch is filled with the best skipped pairs.
    """
    if max_per_gene is None or space.kind != "pairs":
        return list(order[:q])
    counts = np.zeros(len(space.genes), dtype=int)
    picks, skipped = [], []
    for i in order:
        a, b = space.gene_pairs(torch.tensor([i]))[0].tolist()
        if counts[a] >= max_per_gene or counts[b] >= max_per_gene:
            skipped.append(i)
            continue
        picks.append(i)
        counts[a] += 1
        counts[b] += 1
        if len(picks) == q:
            return picks
    if strict:
        return None
    return picks + skipped[:q - len(picks)]  # the cap cannot be met by any candidate: fill by score


class _ScoredPolicy:
    """Shared machinery: score every candidate in chunks, keep the best, apply the per-gene cap."""

    name = "scored"
    prefix = ""

    def __init__(self, max_per_gene: int | None = None, chunk: int = PAIR_CHUNK, **_: object):
        self.max_per_gene = max_per_gene
        self.chunk = chunk

    def score(self, surrogate, space: DesignSpace, idx: torch.Tensor) -> torch.Tensor:  # override
        raise NotImplementedError(f"{type(self).__name__}.score")

    def select(self, surrogate, space: DesignSpace, observed: Mapping[str, object], batch_size: int,
               pending: Sequence[str] = ()) -> Proposal:
        if surrogate is None:
            raise ValueError(f"policy {self.name!r} needs a fitted surrogate "
                             "(start the campaign with initial perturbations)")
        taken = taken_mask(space, observed, pending)
        n_avail = int((~taken).sum())
        q = check_batch(batch_size, n_avail)
        cap = None
        if space.kind == "pairs":  # default: each gene in at most ~4 q / n_genes pairs (>= 2)
            default = max(2, -(-2 * q // max(len(space.genes), 1)) * 2)
            cap = default if self.max_per_gene is None else self.max_per_gene
        k = q if cap is None else min(n_avail, max(SHORTLIST_FACTOR * q, q + 4 * len(space.genes)))
        while True:
            idx, scores = top_k(len(space), lambda i: self.score(surrogate, space, i), k, chunk=self.chunk,
                                exclude=taken)
            picks = capped_batch(space, idx.tolist(), q, cap, strict=k < n_avail)
            if picks is not None:
                break
            k = min(n_avail, 8 * k)  # the shortlist could not meet the per-gene cap: widen it (rare)
        by_idx = dict(zip(idx.tolist(), scores.tolist()))
        mean, sd = predicted(surrogate, space, picks, getattr(self, "w", None))
        items = make_items(space, picks, mean, sd, [by_idx[i] for i in picks], observed, self.prefix, per_pick=True)
        return Proposal(self.name, items)


class UncertaintyPolicy(_ScoredPolicy):
    """Largest total predictive variance over genes: `a(x) = sum_g var_g(x)`.

    Example:
        >>> UncertaintyPolicy().select(ensemble, space, observed, batch_size=16)
    """

    name = "uncertainty"
    prefix = "most uncertain response"

    def score(self, surrogate, space: DesignSpace, idx: torch.Tensor) -> torch.Tensor:
        return surrogate.posterior(space.features(idx)).total_variance  # the variance needs no offset


class ProgramPolicy(_ScoredPolicy):
    """UCB on a gene-program score `s = w . y` (or on the interaction `w . (y - offset)`, or `|s|`).

    `a(x) = mu_s(x) + sqrt(beta) sigma_s(x)` (`|mu_s(x)| + sqrt(beta) sigma_s(x)` with `absolute`).

    Example:
        >>> ProgramPolicy(weights=w, beta=1.0).select(ensemble, space, observed, batch_size=16)
    """

    name = "program"
    prefix = "high program score (UCB)"

    def __init__(self, weights: torch.Tensor | Sequence[float] | None = None, beta: float = 1.0,
                 interaction: bool = False, absolute: bool = False, **kw: object):
        super().__init__(**kw)
        if weights is None:
            raise ConfigError("acquisition 'program' needs program weights (acquisition.program genes)")
        self.w = torch.as_tensor(weights, dtype=torch.float64)
        if beta < 0:
            raise ConfigError(f"acquisition.beta must be >= 0, got {beta}")
        self.beta, self.interaction, self.absolute = beta, interaction, absolute

    def score(self, surrogate, space: DesignSpace, idx: torch.Tensor) -> torch.Tensor:
        X = space.features(idx)
        fast = getattr(space, "offset_score", None)
        if fast is not None:  # pairs: w . offset from the singles' scores, no c x G offset
            off_s = fast(idx, self.w)
            off_s = None if off_s is None else off_s.to("cpu", torch.float64)
            s = surrogate.posterior(X).scalarise(self.w, off_s)
        else:
            offset = space.offset(idx)
            s = surrogate.posterior(X, offset).scalarise(self.w)
            off_s = None if offset is None else offset.to("cpu", torch.float64) @ self.w
        mean = s.mean - off_s if self.interaction and off_s is not None else s.mean
        return (mean.abs() if self.absolute else mean) + self.beta ** 0.5 * s.sd


__all__ = ["ProgramPolicy", "UncertaintyPolicy", "capped_batch"]
