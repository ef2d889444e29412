"""Policies for response campaigns (objective `learn_response`, and `maximize` a gene-program score).

They follow the `AcquisitionPolicy` protocol (`select(surrogate, space, observed, batch_size,
pending) -> Proposal`) over a `perturbloop.design_space.DesignSpace` (single genes, or up to ~1M gene
pairs scored in chunks) with a `ResponseSurrogate`; `observed` maps measured labels to their
response vectors (only the keys matter for availability).

- `random`: uniform draw (the baseline every curve is shown beside).
- `uncertainty`: the largest total predictive variance over genes, `tr Sigma(x) = sum_g var_g(x)`
  (ensemble disagreement, or GP posterior variance in the low-rank output space; IterPert's BALD
  baseline is the same idea). Pair batches cap how often one gene may appear (`max_per_gene`),
  otherwise one uncertain gene fills the whole batch with its pairs.
- `diversity`: greedy k-center in standardised feature space (coreset, Sener & Savarese 2018),
  model-free; on spaces larger than `max_candidates` it runs on a seeded random subsample.
- `program` (objective `maximize`): UCB on a gene-program score `s = w . y`,
  `a(x) = mu_s(x) + sqrt(beta) sigma_s(x)`; with `interaction=True` the score is taken on
  `y - offset` (the deviation from the additive prior, i.e. a genetic interaction), and with
  `absolute=True` on `|s|` (`|mu_s| + sqrt(beta) sigma_s`): find the strongest interactions
  of either sign.

All pick without replacement and never pick observed or pending candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from acquisition.base import Proposal, ProposedItem, check_batch
from perturbloop.errors import ConfigError
from perturbloop.design_space import PAIR_CHUNK, DesignSpace, top_k

SHORTLIST_FACTOR = 8  # pair batches with a per-gene cap choose from the top factor x q by score
MAX_CANDIDATES = 20_000  # k-center on larger spaces runs on a seeded subsample of this size
RATIONALE_NEIGHBOURS = 2


def taken_mask(space: DesignSpace, observed: Mapping[str, object], pending: Sequence[str]) -> torch.Tensor:
    """`n` bool: candidates already observed or pending (labels outside the space are ignored)."""
    mask = torch.zeros(len(space), dtype=torch.bool)
    labels = [*observed.keys(), *pending]
    if labels:
        try:
            mask[space.indices(labels)] = True
        except KeyError:  # some labels are outside the space (e.g. singles measured beside a pair space)
            for lab in labels:
                try:
                    mask[space.indices([lab])] = True
                except KeyError:
                    continue
    return mask


def _generator(seed: int, observed: Mapping, pending: Sequence[str]) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + len(observed) + len(pending))


def _rationale(space: DesignSpace, picks: Sequence[int], observed: Mapping[str, object], prefix: str) -> list[str]:
    """`prefix; near A, B` (nearest observed perturbations in feature space)."""
    labs = []
    for lab in observed:
        try:
            labs.append((lab, int(space.indices([lab])[0])))
        except KeyError:
            continue
    if not labs or not picks:
        return [prefix] * len(picks)
    Xo = space.features(torch.tensor([i for _, i in labs])).cpu()
    Xp = space.features(torch.as_tensor(list(picks), dtype=torch.long)).cpu()
    nn = torch.cdist(Xp, Xo).topk(min(RATIONALE_NEIGHBOURS, len(labs)), largest=False).indices
    return [f"{prefix}; near " + ", ".join(labs[j][0] for j in row.tolist()) for row in nn]


def _items(space: DesignSpace, picks: Sequence[int], mean: Sequence[float | None], sd: Sequence[float | None],
           acq: Sequence[float | None], observed: Mapping[str, object], prefix: str) -> list[ProposedItem]:
    notes = _rationale(space, picks, observed, prefix)
    return [ProposedItem(lab, m, s, a, r) for lab, m, s, a, r in zip(space.labels_at(picks), mean, sd, acq, notes)]


def _summary(surrogate, space: DesignSpace, picks: list[int], w: torch.Tensor | None = None):
    """Predicted magnitude (or program score) and sd of the picked candidates."""
    if surrogate is None or not picks:
        return [None] * len(picks), [None] * len(picks)
    idx = torch.as_tensor(picks, dtype=torch.long)
    post = surrogate.posterior(space.features(idx), space.offset(idx))
    if w is not None:
        m, v = post.project(w)
        return m.tolist(), v.clamp_min(0).sqrt().tolist()
    return post.mean.norm(dim=1).tolist(), post.total_variance.clamp_min(0).sqrt().tolist()


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


class RandomResponsePolicy:
    """Uniform random available candidates, seeded by `(seed, measured + pending count)`."""

    name = "random"

    def __init__(self, seed: int = 0, **_: object):
        self.seed = seed

    def select(self, surrogate, space: DesignSpace, observed: Mapping[str, object], batch_size: int,
               pending: Sequence[str] = ()) -> Proposal:
        avail = (~taken_mask(space, observed, pending)).nonzero().squeeze(-1)
        q = check_batch(batch_size, avail.numel())
        picks = avail[torch.randperm(avail.numel(), generator=_generator(self.seed, observed, pending))[:q]].tolist()
        mean, sd = _summary(surrogate, space, picks)
        return Proposal(self.name, _items(space, picks, mean, sd, [None] * q, observed, "random pick"))


class _ScoredPolicy:
    """Shared machinery: score every candidate in chunks, keep the best, apply the per-gene cap."""

    name = "scored"
    prefix = ""

    def __init__(self, max_per_gene: int | None = None, chunk: int = PAIR_CHUNK, **_: object):
        self.max_per_gene = max_per_gene
        self.chunk = chunk

    def score(self, surrogate, space: DesignSpace, idx: torch.Tensor) -> torch.Tensor:  # override
        raise NotImplementedError(f"{type(self).__name__}.score")

    def _cap(self, space: DesignSpace, q: int) -> int | None:
        if space.kind != "pairs":
            return None
        if self.max_per_gene is not None:
            return self.max_per_gene
        return max(2, -(-2 * q // max(len(space.genes), 1)) * 2)  # default: each gene in at most ~4 q / n_genes pairs (>= 2)

    def select(self, surrogate, space: DesignSpace, observed: Mapping[str, object], batch_size: int,
               pending: Sequence[str] = ()) -> Proposal:
        if surrogate is None:
            raise ValueError(f"policy {self.name!r} needs a fitted surrogate (start the campaign with initial perturbations)")
        taken = taken_mask(space, observed, pending)
        q = check_batch(batch_size, int((~taken).sum()))
        cap = self._cap(space, q)
        n_avail = int((~taken).sum())
        k = q if cap is None else min(n_avail, max(SHORTLIST_FACTOR * q, q + 4 * len(space.genes)))
        while True:
            idx, scores = top_k(len(space), lambda i: self.score(surrogate, space, i), k, chunk=self.chunk, exclude=taken)
            picks = capped_batch(space, idx.tolist(), q, cap, strict=k < n_avail)
            if picks is not None:
                break
            k = min(n_avail, 8 * k)  # the shortlist could not meet the per-gene cap: widen it (rare)
        by_idx = dict(zip(idx.tolist(), scores.tolist()))
        mean, sd = _summary(surrogate, space, picks, getattr(self, "w", None))
        return Proposal(self.name, _items(space, picks, mean, sd, [by_idx[i] for i in picks], observed, self.prefix))


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
            mean, var = surrogate.posterior(X).project(self.w, off_s if off_s is not None else None)
        else:
            off_s = None
            offset = space.offset(idx)
            mean, var = surrogate.posterior(X, offset).project(self.w)
            if offset is not None:
                off_s = offset.to("cpu", torch.float64) @ self.w
        if self.interaction and off_s is not None:
            mean = mean - off_s
        if self.absolute:
            mean = mean.abs()
        return mean + self.beta ** 0.5 * var.clamp_min(0).sqrt()


class DiversityPolicy:
    """Greedy k-center over standardised features; observed + pending count as covered.

    `x_j = argmax_x min_{c in C_j} ||x - c||`, `C_j = observed + pending + earlier picks`; a seeded
    random start when nothing is covered; on spaces over `max_candidates`, a seeded subsample.
    """

    name = "diversity"

    def __init__(self, seed: int = 0, max_candidates: int = MAX_CANDIDATES, chunk: int = PAIR_CHUNK, **_: object):
        self.seed, self.max_candidates, self.chunk = seed, max_candidates, chunk

    def select(self, surrogate, space: DesignSpace, observed: Mapping[str, object], batch_size: int,
               pending: Sequence[str] = ()) -> Proposal:
        taken = taken_mask(space, observed, pending)
        avail = (~taken).nonzero().squeeze(-1)
        q = check_batch(batch_size, avail.numel())
        gen = _generator(self.seed, observed, pending)
        if avail.numel() > self.max_candidates:
            avail = avail[torch.randperm(avail.numel(), generator=gen)[:self.max_candidates]].sort().values
        Xa = torch.cat([space.features(i).cpu() for i in torch.split(avail, self.chunk)]) if avail.numel() else torch.zeros(0, space.dim)
        mu, sd = Xa.mean(0), Xa.std(0) if Xa.shape[0] > 1 else torch.ones(Xa.shape[1], dtype=Xa.dtype)
        sd = torch.where(sd > 1e-8, sd, torch.ones_like(sd))
        Xa = (Xa - mu) / sd
        covered = taken.nonzero().squeeze(-1)
        d2 = torch.full((Xa.shape[0],), float("inf"), dtype=torch.float64)
        for c in torch.split(covered, self.chunk):
            Xc = (space.features(c).cpu() - mu) / sd
            d2 = torch.minimum(d2, torch.cdist(Xa, Xc).min(1).values.square())
        free = torch.ones(Xa.shape[0], dtype=torch.bool)
        picks_local, dist = [], []
        if not covered.numel():
            first = int(torch.randint(Xa.shape[0], (1,), generator=gen))
            picks_local.append(first)
            dist.append(None)
            free[first] = False
            d2 = (Xa - Xa[first]).square().sum(1)
        while len(picks_local) < q:
            i = int(d2.masked_fill(~free, -1.0).argmax())
            picks_local.append(i)
            dist.append(float(d2[i].clamp_min(0).sqrt()))
            free[i] = False
            d2 = torch.minimum(d2, (Xa - Xa[i]).square().sum(1))
        picks = avail[picks_local].tolist()
        mean, sdv = _summary(surrogate, space, picks)
        return Proposal(self.name, _items(space, picks, mean, sdv, dist, observed, "farthest from measured"))


RESPONSE_POLICIES: dict[str, Callable[..., object]] = {
    "random": RandomResponsePolicy,
    "uncertainty": UncertaintyPolicy,
    "diversity": DiversityPolicy,
    "program": ProgramPolicy,
}


def make_response_policy(kind: str, **kwargs: object):
    """A response-campaign policy by config name (see module docstring)."""
    try:
        factory = RESPONSE_POLICIES[kind]
    except KeyError:
        raise ConfigError(f"acquisition.kind: unknown response policy {kind!r}; available: {', '.join(RESPONSE_POLICIES)}") from None
    return factory(**kwargs)


__all__ = ["RESPONSE_POLICIES", "DiversityPolicy", "ProgramPolicy", "RandomResponsePolicy", "UncertaintyPolicy",
           "capped_batch", "make_response_policy", "taken_mask"]
