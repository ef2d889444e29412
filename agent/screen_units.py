"""A proposal's predictions in the screen's own units: predicted |score| (or score) and the probability of a hit.

A screen surrogate's posterior `N(mu, sd^2)` is on the scale it was trained on (`surrogate.target`,
`surrogate.target_transform`); the store keeps `mu` and `sd` as they came, and the proposal's record keeps the
scale (`PredictionScale`, in `ProposalRecord.units`). With `t` the hit threshold (the |score| at or above
which a gene is a hit):

- `identity` (the model predicts |score|, or the signed score for `objective = "maximize"`): `mu +- sd`;
  `P(hit) = P(|y| >= t) = Phi((mu - t) / sd) + Phi((-t - mu) / sd)` (the second term is ~0 for |score|).
- `log` (`target_transform = "log"`: the model predicts `z = log(|score| + m)`, `m` the median of the
  training |scores|, as `surrogates.gp.GPSurrogate`): the posterior median `exp(mu) - m`, with the 68%
  interval `exp(mu -+ sd) - m` (a monotone map of `z`'s); `P(hit) = Phi((mu - log(t + m)) / sd)`.
- `hit_call` (a least-squares GP on 0/1 hit calls): `P(hit) = clip(mu, 0, 1)`; it predicts no |score|.
- `campaign`: a response campaign's predictions are in the campaign's units already (`prediction_label`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Literal

from perturbloop.config import CampaignConfig
from perturbloop.errors import ConfigError

Kind = Literal["identity", "log", "hit_call", "campaign"]
MIN_SD = 1e-12  # below it a prediction is taken as exact: P(hit) is 0 or 1


normal_cdf = NormalDist().cdf  # `Phi(x)`, the standard normal CDF


@dataclass(frozen=True)
class PredictionScale:
    """How a proposal's stored `mean`/`sd` map to the screen's units (module docstring)."""

    kind: Kind = "identity"
    signed: bool = False  # identity: the model predicts the signed score (objective maximize), not |score|
    offset: float | None = None  # log: the `m` of `z = log(|score| + m)`
    hit_threshold: float | None = None  # |score| of a hit; None: unknown (no P(hit))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> PredictionScale:
        return cls(**{k: d[k] for k in ("kind", "signed", "offset", "hit_threshold") if k in d})


@dataclass(frozen=True)
class ScreenPrediction:
    """One perturbation's prediction in the screen's units: `value` with its +-1 sd interval (`low`, `high`),
    and `p_hit`; None where the model does not predict it."""

    value: float | None
    low: float | None
    high: float | None
    p_hit: float | None


def median_offset(targets: list[float]) -> float:
    """`m` of the log transform: the median of the training targets, the lower one of the two middle values for
    an even count (`torch.median`, as `GPSurrogate.fit`), at least 1e-8."""
    ordered = sorted(targets)
    return max(ordered[(len(ordered) - 1) // 2], 1e-8) if ordered else 1e-8


def prediction_scale(config: CampaignConfig, observed: Mapping[str, float],
                     hit_threshold: float | None) -> PredictionScale:
    """The scale of the predictions of a model trained on `observed` (label -> the modelled target) under `config`."""
    if config.is_response:
        return PredictionScale("campaign")
    t = hit_threshold if hit_threshold is not None and math.isfinite(hit_threshold) else None
    s = config.surrogate
    if s.target == "hit_call":
        return PredictionScale("hit_call", hit_threshold=t)
    if s.target_transform == "log":
        return PredictionScale("log", offset=median_offset(list(observed.values())), hit_threshold=t)
    return PredictionScale("identity", signed=config.objective != "hits", hit_threshold=t)


def proposal_units(ctx, observed: Mapping[str, float]) -> dict:
    """What `Store.save_proposal` keeps as the proposal's `units`, for a campaign context `ctx` whose model was
    trained on `observed`: empty for a response campaign (its predictions are in the campaign's units)."""
    if ctx.config.is_response:
        return {}
    try:
        t = ctx.hit_threshold
    except ConfigError:  # no screen defines the hits and data.hit_threshold is not set
        t = None
    return prediction_scale(ctx.config, observed, t).as_dict()


def in_screen_units(mean: float | None, sd: float | None, scale: PredictionScale) -> ScreenPrediction:
    """The stored posterior `N(mean, sd^2)` of one perturbation in the screen's units (module docstring)."""
    if mean is None:
        return ScreenPrediction(None, None, None, None)
    sd = max(float(sd or 0.0), 0.0)
    t = scale.hit_threshold

    def above(z_mean: float, z_cut: float) -> float:  # P(Z >= z_cut), Z ~ N(z_mean, sd^2)
        if sd < MIN_SD:
            return float(z_mean >= z_cut)
        return normal_cdf((z_mean - z_cut) / sd)

    if scale.kind == "campaign":
        return ScreenPrediction(mean, mean - sd, mean + sd, None)
    if scale.kind == "hit_call":
        return ScreenPrediction(None, None, None, min(max(mean, 0.0), 1.0))
    if scale.kind == "log":
        m = float(scale.offset if scale.offset is not None else 1e-8)
        p = None if t is None else above(mean, math.log(t + m))
        return ScreenPrediction(math.exp(mean) - m, math.exp(mean - sd) - m, math.exp(mean + sd) - m, p)
    p = None if t is None else min(1.0, above(mean, t) + above(-mean, t))
    return ScreenPrediction(mean, mean - sd, mean + sd, p)


def value_label(config: CampaignConfig, scale: PredictionScale) -> str | None:
    """The header of the predicted-value column (None: the model predicts no value, only P(hit))."""
    if scale.kind == "campaign":
        return config.prediction_label
    if scale.kind == "hit_call":
        return None
    what = "score" if scale.signed else "|score|"
    if scale.kind == "log":
        return f"predicted {what} (68% interval)"
    return f"predicted {what} +- sd"
