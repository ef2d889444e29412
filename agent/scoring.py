"""How a campaign's model is scored after each round (evaluation only: the scores never reach a policy).

A scorer has `score(model, observed) -> {metric: value}`, called on the model refit on everything measured
(`observed`: label -> the response it was trained on). Which one a campaign has is part of what it is made of
(agent.parts): a pooled screen ranks what is left, a response campaign predicts what it held out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from perturbloop.design_space import DesignSpace
from perturbloop.response_metrics import Evaluation, response_metrics
from surrogates.response import fit_on_space, predict_on_space


@dataclass
class UnmeasuredSpearman:
    """A pooled screen's model on the genes not yet measured (the BioDiscoveryAgent setting): Spearman
    correlation of the posterior mean with the true objective (`|score|` for hits), `spearman_unmeasured`."""

    space: DesignSpace
    truth: pd.Series  # the objective's true value of every candidate, by label (NaN: unknown)

    def score(self, model, observed: Mapping[str, object]) -> dict[str, float]:
        from scipy.stats import spearmanr

        unmeasured = [lab for lab in self.space.labels if lab not in observed]
        if not unmeasured:
            return {}
        mean = model.posterior(self.space.features(self.space.indices(unmeasured))).mean.reshape(-1).numpy()
        truth = self.truth.reindex(unmeasured).to_numpy()
        ok = ~np.isnan(truth)
        return {"spearman_unmeasured": float(spearmanr(mean[ok], truth[ok]).statistic)}


@dataclass
class HeldOutScores:
    """A response campaign's model on its held-out perturbations (never run): the response metrics
    (perturbloop.response_metrics) beside those of the baselines fitted on the same observations
    (`<metric>@<baseline>`); objective `maximize` adds `hit_ratio` and `best_score` of what was measured."""

    space: DesignSpace
    evaluation: Evaluation
    baselines: Mapping[str, Callable[[], object]]  # name -> unfitted baseline model

    def score(self, model, observed: Mapping[str, object]) -> dict[str, float]:
        ev = self.evaluation

        def metrics(m, additive: np.ndarray | None = None) -> dict[str, float]:
            return response_metrics(predict_on_space(m, self.space, ev.test_idx), ev.truth, de_idx=ev.de,
                                    expressed_idx=ev.expressed, additive=additive)

        out = dict(metrics(model, ev.additive))
        for name, make in self.baselines.items():
            out.update({f"{k}@{name}": v for k, v in metrics(fit_on_space(make(), self.space, observed)).items()})
        if ev.hits:
            out["hit_ratio"] = len(ev.hits & set(observed)) / len(ev.hits)
            out["best_score"] = max((ev.scores.get(k, -np.inf) for k in observed), default=float("nan"))
        return {k: float(v) for k, v in out.items()}
