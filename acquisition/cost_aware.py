"""Cost-aware choice of (gene, context) pairs for hit discovery in a target context.

Currency: expected target hits per unit cost. A gene `g` is a hit when `|f(g, t)| > tau` in the target `t`;
`tau` solves `mean_g P(|f(g, t)| > tau) = hit_fraction` over the pool (the hit list's expected size under the
posterior), and `p_g = P(|f(g, t)| > tau) = Phi((mu - tau) / s) + Phi((-tau - mu) / s)`.

* Measuring `g` in the target finds the hit with probability `p_g`: rate `p_g / kappa_t`.
* Measuring `g` in another context `c` is a screening step (BoTorch's multi-fidelity idea, valued per unit cost
  as its `InverseCostWeightedUtility`). It moves the target mean by `s z`, `z ~ N(0, 1)`, with
  `s^2 = Sigma_ct^2 / (Sigma_cc + noise_c)` (the reduction of the target variance of `g`), leaving variance
  `Sigma_tt - s^2`; the gene then goes on to the target only if its updated `p'(z)` beats `p*`, the
  probability of the last target pick the round could afford. Over Gauss-Hermite nodes `z_k`:
  `rate_c = E[p'(z) 1(p'(z) > p*)] / (kappa_c + kappa_t P(p'(z) > p*))`.
  A context that does not inform the target (`Sigma_ct = 0`) gives `p' = p_g` and a rate below `p_g / kappa_t`:
  it is skipped; a cheap, informative one wins for uncertain genes.

The round's picks are the best rates, greedily, while their costs fit the round's budget, at most one context
per gene; only the contexts the scientist allows (`allowed`) are considered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from perturbloop.contexts import ContextSpace
from surrogates.multitask import ContextPosterior

HIT_FRACTION = 0.05
GH_NODES = 16  # Gauss-Hermite nodes for E over z ~ N(0, 1); p'(z) is smooth in z, 16 nodes are exact to ~1e-6
MIN_SD = 1e-12
TAU_ITER = 60  # bisection steps for tau (interval halves each step)


@dataclass
class ContextPick:
    gene: str
    context: str
    cost: float
    rate: float  # expected target hits per unit cost
    p_hit: float  # P(hit in the target) now
    label: str


def p_hit(mean: torch.Tensor, var: torch.Tensor, tau: float) -> torch.Tensor:
    """`P(|f| > tau)` for `f ~ N(mean, var)` (elementwise)."""
    s = var.clamp_min(MIN_SD).sqrt()
    return torch.special.ndtr((mean - tau) / s) + torch.special.ndtr((-tau - mean) / s)


def hit_threshold(mean: torch.Tensor, var: torch.Tensor, hit_fraction: float) -> float:
    """`tau` with `mean_g P(|f_g| > tau) = hit_fraction` (bisection; the left side falls with tau)."""
    lo, hi = 0.0, float(mean.abs().max() + 10 * var.clamp_min(0).sqrt().max()) + 1e-12
    for _ in range(TAU_ITER):
        mid = (lo + hi) / 2
        if float(p_hit(mean, var, mid).mean()) > hit_fraction:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def screening_rate(mu_t: torch.Tensor, var_t: torch.Tensor, cov_ct: torch.Tensor, var_c: torch.Tensor,
                   noise_c: float, tau: float, p_star: float, cost_c: float, cost_t: float) -> torch.Tensor:
    """`rate_c` of the module docstring for `m` genes (all arguments `m` tensors but the scalars)."""
    z, w = np.polynomial.hermite_e.hermegauss(GH_NODES)
    z = torch.as_tensor(z, dtype=torch.float64)
    w = torch.as_tensor(w / w.sum(), dtype=torch.float64)
    s2 = cov_ct ** 2 / (var_c + noise_c).clamp_min(MIN_SD)
    s2 = torch.minimum(s2, var_t)
    p = p_hit(mu_t[:, None] + s2.sqrt()[:, None] * z[None, :], (var_t - s2)[:, None], tau)  # m x nodes
    go = (p > p_star).to(p.dtype)
    hits = (w * p * go).sum(-1)
    cost = cost_c + cost_t * (w * go).sum(-1)
    return hits / cost


class CostAwareHitPolicy:
    """Expected target hits per unit cost over (gene, context) pairs (module docstring).

    Example:
        >>> CostAwareHitPolicy("Stim48hr").select(model.joint(space.gene_X), space, measured, budget=40)
    """

    name = "cost_aware"

    def __init__(self, target: str, *, hit_fraction: float = HIT_FRACTION):
        if not 0 < hit_fraction < 1:
            raise ValueError(f"hit_fraction must be in (0, 1), got {hit_fraction}")
        self.target = target
        self.hit_fraction = hit_fraction

    def select(self, post: ContextPosterior, space: ContextSpace, measured: np.ndarray, budget: float, *,
               allowed: Sequence[str] | None = None) -> list[ContextPick]:
        """Picks for one round. `post`: joint posterior of every gene of `space` (in order); `measured`: `G x C`
        bool, pairs measured or pending; `budget`: cost units this round may spend; `allowed`: context names a
        round may use (default all)."""
        t = space.context_index(self.target)
        cols = space.check_allowed(allowed)
        costs = space.costs
        if budget < costs[cols].min():
            raise ValueError(f"round budget {budget:g} is below the cheapest allowed context's cost {costs[cols].min():g}")
        mu_t, var_t = post.marginal(t)
        tau = hit_threshold(mu_t, var_t, self.hit_fraction)
        p = p_hit(mu_t, var_t, tau)
        done_t = torch.as_tensor(measured[:, t])
        rates: list[torch.Tensor] = []
        ctxs: list[int] = []
        free_t = torch.as_tensor(space.offered[:, t]) & ~done_t
        direct = torch.where(free_t, p / costs[t], torch.full_like(p, -1.0))
        n_direct = int(budget // costs[t])
        cand = p[free_t].sort(descending=True).values
        p_star = float(cand[n_direct - 1]) if 0 < n_direct <= len(cand) else 0.0
        for c in cols:
            if c == t:
                rates.append(direct)
            else:
                free = torch.as_tensor(space.offered[:, c] & ~measured[:, c]) & free_t
                r = screening_rate(mu_t, var_t, post.cov[:, c, t], post.cov[:, c, c], float(post.noise[c]), tau,
                                   p_star, float(costs[c]), float(costs[t]))
                rates.append(torch.where(free, r, torch.full_like(r, -1.0)))
            ctxs.append(c)
        R = torch.stack(rates, -1)  # G x len(cols)
        order = torch.argsort(R.reshape(-1), descending=True, stable=True).tolist()
        picks: list[ContextPick] = []
        used_genes: set[int] = set()
        left = budget
        for flat in order:
            g, j = divmod(flat, len(cols))
            rate = float(R[g, j])
            if rate < 0 or left < costs[cols].min():
                break
            c = ctxs[j]
            if g in used_genes or costs[c] > left:
                continue
            picks.append(ContextPick(space.genes[g], space.contexts[c].name, float(costs[c]), rate, float(p[g]),
                                     space.label(g, c)))
            used_genes.add(g)
            left -= costs[c]
        return picks


def random_target_picks(space: ContextSpace, measured: np.ndarray, budget: float, target: str,
                        rng: np.random.Generator) -> list[ContextPick]:
    """Random genes in the target context while their cost fits `budget` (the baseline)."""
    t = space.context_index(target)
    free = np.flatnonzero(space.offered[:, t] & ~measured[:, t])
    n = min(len(free), int(budget // space.costs[t]))
    chosen = rng.choice(free, size=n, replace=False) if n else []
    return [ContextPick(space.genes[g], target, float(space.costs[t]), float("nan"), float("nan"), space.label(g, t))
            for g in chosen]
