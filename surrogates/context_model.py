"""The context models (surrogates/multitask.py) as a campaign's surrogate over a `ContextSpace`.

A campaign's loop fits its model on candidate feature rows (`space.features(idx)`, here `[gene features, gene
index, context index]`) and the measured values `Y` (`n x 1`); `ContextModel` splits those columns and calls the
model's `fit(X, ctx, y, genes)`; `joint(space)` is the model's joint posterior of every gene over the contexts
(`m x C` mean, `m x C x C` covariance), what the cost-aware policy ranks. Each round fits afresh from the
model's defaults (no warm start kept across processes): a resumed campaign fits as an uninterrupted one.
"""

from __future__ import annotations

from typing import Literal

import torch

from perturbloop.contexts import ContextSpace
from surrogates.multitask import ContextPosterior, IndependentContextGP, MultiTaskContextGP, PooledContextGP

# multitask_icm: the multi-task GP without the kernel over time (a free ICM task covariance)
CONTEXT_MODELS = {"multitask": MultiTaskContextGP, "multitask_icm": MultiTaskContextGP,
                  "independent": IndependentContextGP, "pooled": PooledContextGP}


class ContextModel:
    """A `CONTEXT_MODELS` model fitted on a campaign's (gene, context) observations.

    Example:
        >>> m = ContextModel("multitask", space, max_iter=15); m.fit(space.features(idx), Y); m.joint(space)
    """

    def __init__(self, kind: Literal["multitask", "multitask_icm", "independent", "pooled"], space: ContextSpace, *,
                 max_iter: int = 15, seed: int = 0):
        if kind not in CONTEXT_MODELS:
            raise ValueError(f"unknown context model {kind!r}; choose from {', '.join(CONTEXT_MODELS)}")
        self.name = kind
        self.seed = seed  # seeds BoTorch's retries (a failed L-BFGS-B start is retried from parameters drawn from priors)
        bounds = torch.stack([space.gene_X.min(0).values, space.gene_X.max(0).values])
        extra = {"hours": [c.hours for c in space.contexts]} if kind == "multitask" else {}  # the kernel over time
        self.model = CONTEXT_MODELS[kind](len(space.contexts), bounds=bounds, max_iter=max_iter, **extra)

    def fit(self, X: torch.Tensor, Y: torch.Tensor, offset: torch.Tensor | None = None) -> None:
        """`X`: `n x (d + 2)` rows of `ContextSpace.features`, `Y`: `n x 1` measured values (`offset` unused)."""
        genes, ctx = X[:, -2].round().long(), X[:, -1].round().long()
        with torch.random.fork_rng():  # the same fit whatever the process drew before; the caller's stream untouched
            torch.manual_seed(self.seed)
            self.model.fit(X[:, :-2], ctx, Y.reshape(-1).to(torch.float64), genes)

    def joint(self, space: ContextSpace) -> ContextPosterior:
        """The joint posterior over contexts of every gene of `space`, in its order."""
        return self.model.joint(space.gene_X, torch.arange(len(space.genes)))
