"""The AcquisitionPolicy protocol and the Proposal it returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from perturbloop.design_space import SingleSpace
from surrogates.base import Surrogate, SurrogatePosterior

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
    """`select(surrogate, pool, observed, batch_size, pending) -> Proposal`.

    `observed` maps measured perturbation labels to their objective value; `pending` lists
    labels that are running or must not be picked. A policy never picks either.
    `surrogate` is fitted on `observed`, or None when nothing has been observed yet.
    """

    name: str

    def select(self, surrogate: Surrogate | None, pool: SingleSpace, observed: Mapping[str, float],
               batch_size: int, pending: Sequence[str] = ()) -> Proposal: ...


def available_mask(pool: SingleSpace, observed: Mapping[str, float], pending: Sequence[str]) -> torch.Tensor:
    """`n` bool: candidates that are neither observed nor pending."""
    mask = torch.ones(len(pool), dtype=torch.bool)
    taken = [pool.index[lab] for lab in (*observed.keys(), *pending) if lab in pool.index]
    if taken:
        mask[taken] = False
    return mask


def check_batch(batch_size: int, n_available: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return min(batch_size, n_available)


def pool_posterior(surrogate: Surrogate, pool: SingleSpace, observed: Mapping[str, float], batch_size: int,
                   pending: Sequence[str]) -> tuple[torch.Tensor, int, SurrogatePosterior]:
    """What every model-based policy starts from: the `n` availability mask, the batch size capped
    to what is available, and the marginal posterior over the whole pool."""
    mask = available_mask(pool, observed, pending)
    return mask, check_batch(batch_size, int(mask.sum())), surrogate.posterior(pool.X)


def nearest_observed(pool: SingleSpace, picks: Sequence[int], observed: Mapping[str, float],
                     k: int = RATIONALE_NEIGHBOURS) -> list[str]:
    """Short rationale per pick: the `k` nearest measured perturbations (feature space) and their values."""
    obs_labels = [lab for lab in observed if lab in pool.index]
    if not obs_labels or not picks:
        return ["" for _ in picks]
    Xo = pool.X[pool.indices(obs_labels)]
    Xp = pool.X[list(picks)]
    d = torch.cdist(Xp, Xo)
    nn = d.topk(min(k, len(obs_labels)), largest=False).indices
    return ["near " + ", ".join(f"{obs_labels[j]} ({observed[obs_labels[j]]:.2f})" for j in row.tolist()) for row in nn]


def make_items(pool: SingleSpace, picks: Sequence[int], mean: torch.Tensor | None, sd: torch.Tensor | None,
               acq: torch.Tensor | None, observed: Mapping[str, float], prefix: str = "") -> list[ProposedItem]:
    notes = nearest_observed(pool, picks, observed)
    out = []
    for j, i in enumerate(picks):
        out.append(ProposedItem(
            pool.labels[i],
            None if mean is None else float(mean[i]),
            None if sd is None else float(sd[i]),
            None if acq is None else float(acq[j]),
            "; ".join(x for x in (prefix, notes[j]) if x),
        ))
    return out
