"""The AcquisitionPolicy protocol, the Proposal it returns, and what every policy shares: which candidates are
taken, the seeded generator, predictions of the picks and the items with their rationale.

A policy works on any design space (`perturbloop.design_space.DesignSpace`: single genes, pairs) through
`features(idx)`, `indices(labels)` and `labels_at(idx)`; `observed` maps measured labels to what the model was
trained on (a screen's scalar, a response vector).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from perturbloop.design_space import DesignSpace
from surrogates.base import Surrogate

RATIONALE_NEIGHBOURS = 3


@dataclass
class ProposedItem:
    perturbation: str
    mean: float | None
    sd: float | None
    acq_value: float | None
    rationale: str = ""


@dataclass
class Proposal:
    """An ordered batch (best first) with the policy that made it."""

    policy: str
    items: list[ProposedItem] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return [i.perturbation for i in self.items]


@runtime_checkable
class AcquisitionPolicy(Protocol):
    """`select(surrogate, space, observed, batch_size, pending) -> Proposal`.

    `observed` maps measured perturbation labels to what the model was trained on; `pending` lists
    labels that are running or must not be picked. A policy never picks either.
    `surrogate` is fitted on `observed`, or None when nothing has been observed yet.
    """

    name: str

    def select(self, surrogate: Surrogate | None, space: DesignSpace, observed: Mapping[str, object],
               batch_size: int, pending: Sequence[str] = ()) -> Proposal: ...


def check_batch(batch_size: int, n_available: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return min(batch_size, n_available)


def top_available(score: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` largest `score` (`n`) among the available candidates (`mask`, `n` bool)."""
    return score.masked_fill(~mask, float("-inf")).topk(k).indices


def taken_mask(space: DesignSpace, observed: Mapping[str, object], pending: Sequence[str]) -> torch.Tensor:
    """`n` bool: candidates already observed or pending (labels outside the space are ignored)."""
    mask = torch.zeros(len(space), dtype=torch.bool)
    mask[list(known_indices(space, [*observed.keys(), *pending]).values())] = True
    return mask


def known_indices(space: DesignSpace, labels: Sequence[str]) -> dict[str, int]:
    """Label -> candidate index of the `labels` that are in `space` (the others are skipped)."""
    try:
        return dict(zip(labels, space.indices(list(labels)).tolist()))
    except KeyError:  # some labels are outside the space (e.g. singles measured beside a pair space)
        if len(labels) == 1:
            return {}
        return {lab: i for one in labels for lab, i in known_indices(space, [one]).items()}


def seeded_generator(seed: int, observed: Mapping, pending: Sequence[str]) -> torch.Generator:
    """A generator seeded by `(seed, measured + pending count)`: the same campaign state always gives the same
    draw, also after a restart."""
    return torch.Generator().manual_seed(seed * 1_000_003 + len(observed) + len(pending))


def predicted(surrogate, space: DesignSpace, picks: Sequence[int],
              w: torch.Tensor | None = None) -> tuple[list[float | None], list[float | None]]:
    """Predicted objective and sd of the picks, for the proposal: a screen model's posterior; a response model's
    scalarised by `w` (`w^T mu`, `sqrt(w^T Sigma w)`), or without `w` the response size (`||mu||`, `sqrt(tr Sigma)`)."""
    if surrogate is None or not len(picks):
        return [None] * len(picks), [None] * len(picks)
    idx = torch.as_tensor(list(picks), dtype=torch.long)
    offset = space.offset(idx)
    X = space.features(idx)
    post = surrogate.posterior(X) if offset is None else surrogate.posterior(X, offset)
    if w is not None or not hasattr(post, "total_variance"):  # a one-readout posterior scalarises to itself
        s = post.scalarise(w)
        return s.mean.tolist(), s.sd.tolist()
    return post.mean.norm(dim=1).tolist(), post.total_variance.clamp_min(0).sqrt().tolist()


def nearest_observed(space: DesignSpace, picks: Sequence[int], observed: Mapping[str, object],
                     k: int = RATIONALE_NEIGHBOURS) -> list[str]:
    """Short rationale per pick: the `k` nearest measured perturbations (feature space), with their values where
    the value is one number."""
    labs = list(known_indices(space, list(observed)).items())
    if not labs or not len(picks):
        return ["" for _ in picks]
    Xo = space.features(torch.tensor([i for _, i in labs])).cpu()
    Xp = space.features(torch.as_tensor(list(picks), dtype=torch.long)).cpu()
    nn = torch.cdist(Xp, Xo).topk(min(k, len(labs)), largest=False).indices

    def shown(lab: str) -> str:
        v = observed[lab]
        return f"{lab} ({v:.2f})" if isinstance(v, (int, float)) else lab

    return ["near " + ", ".join(shown(labs[j][0]) for j in row.tolist()) for row in nn]


def make_items(space: DesignSpace, picks: Sequence[int], mean: torch.Tensor | Sequence[float | None] | None,
               sd: torch.Tensor | Sequence[float | None] | None, acq: torch.Tensor | Sequence[float | None] | None,
               observed: Mapping[str, object], prefix: str = "", *, per_pick: bool = False) -> list[ProposedItem]:
    """The proposal's items, best first: each pick's prediction (`mean[i]`, `sd[i]` indexed by candidate, or by
    position with `per_pick`), acquisition value (by position) and rationale (`prefix; near ...`)."""
    notes = nearest_observed(space, picks, observed)
    labels = space.labels_at(picks)

    def num(values: torch.Tensor | Sequence[float | None] | None, at: int) -> float | None:
        return None if values is None or values[at] is None else float(values[at])

    out = []
    for j, i in enumerate(picks):
        at = j if per_pick else i
        note = "; ".join(x for x in (prefix, notes[j]) if x)
        out.append(ProposedItem(labels[j], num(mean, at), num(sd, at), num(acq, j), note))
    return out
