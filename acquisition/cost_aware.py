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
  it is skipped (a screening pair counts only where its rate beats the same gene's direct rate `p_g / kappa_t`);
  a cheap, informative one wins for uncertain genes.

Which target genes (`order`): `"p_hit"` takes the genes of highest `p_g`; `"thompson"` (default) keeps the same
rates, so the same split of the budget over contexts, but hands them out in the order of one posterior draw
`|f~_g - m|` per gene (`f~_g ~ N(mu_g, Sigma_tt)`, `m` the median mean): the k-th gene of the draw takes the k-th
best target rate. Why: with GO features the posterior mean ranks the GWT 48 h hits no better than chance (AUC
0.45-0.53, 2 seeds of activation), so `p_g` follows the posterior variance, which is largest for genes at the edge
of feature space, and those are depleted of hits (top 2% by feature norm: 0 of 76 are hits, 5% overall). The
order was chosen on the activation objective only (leave-one-objective-out: ageing is the held-out check).

The round's picks are the best rates, greedily, while their costs fit the round's budget, at most one context
per gene; only the contexts the scientist allows (`allowed`) are considered. In a campaign's last round
(`rounds_left=1`) no screened gene can go on to the target, so only the target is measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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

    @classmethod
    def at(cls, space: ContextSpace, g: int, c: int, rate: float = float("nan"),
           p_hit: float = float("nan")) -> ContextPick:
        """Gene `g` in context `c` of `space` (rate and P(hit) unknown by default: a random pick)."""
        return cls(space.genes[g], space.contexts[c].name, float(space.costs[c]), rate, p_hit, space.label(g, c))


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
    s2 = torch.minimum(cov_ct ** 2 / (var_c + noise_c).clamp_min(MIN_SD), var_t)
    p = p_hit(mu_t[:, None] + s2.sqrt()[:, None] * z[None, :], (var_t - s2)[:, None], tau)  # m x nodes
    go = (p > p_star).to(p.dtype)
    return (w * p * go).sum(-1) / (cost_c + cost_t * (w * go).sum(-1))


class CostAwareHitPolicy:
    """Expected target hits per unit cost over (gene, context) pairs (module docstring).

    Example:
        >>> CostAwareHitPolicy("Stim48hr").select(model.joint(space.gene_X), space, measured, budget=40)
    """

    name = "cost_aware"

    def __init__(self, target: str, *, hit_fraction: float = HIT_FRACTION,
                 order: Literal["thompson", "p_hit"] = "thompson", seed: int = 0):
        if not 0 < hit_fraction < 1:
            raise ValueError(f"hit_fraction must be in (0, 1), got {hit_fraction}")
        if order not in ("thompson", "p_hit"):
            raise ValueError(f"order must be 'thompson' or 'p_hit', got {order!r}")
        self.target = target
        self.hit_fraction = hit_fraction
        self.order = order
        self._gen = torch.Generator().manual_seed(seed)

    def select(self, post: ContextPosterior, space: ContextSpace, measured: np.ndarray, budget: float, *,
               allowed: Sequence[str] | None = None, rounds_left: int | None = None,
               generator: torch.Generator | None = None) -> list[ContextPick]:
        """Picks for one round. `post`: joint posterior of every gene of `space` (in order); `measured`: `G x C`
        bool, pairs measured or pending; `budget`: cost units this round may spend; `allowed`: context names a
        round may use (default all); `rounds_left`: rounds including this one (None: unknown, screening allowed;
        1: the last round, target only when the target is allowed); `generator`: the Thompson draw's (default the
        policy's own stream, seeded once at construction)."""
        t = space.context_index(self.target)
        cols = space.check_allowed(allowed)
        if rounds_left is not None and rounds_left <= 1 and t in cols:
            cols = [t]
        costs = space.costs
        if budget < costs[cols].min():
            raise ValueError(f"round budget {budget:g} is below the cheapest allowed context's cost "
                             f"{costs[cols].min():g}")
        mu_t, var_t = post.marginal(t)
        tau = hit_threshold(mu_t, var_t, self.hit_fraction)
        p = p_hit(mu_t, var_t, tau)
        free_t = torch.as_tensor(space.offered[:, t] & ~measured[:, t])
        direct = torch.where(free_t, p / costs[t], -1.0)
        if self.order == "thompson" and bool(free_t.any()):
            draw = mu_t + var_t.sqrt() * torch.randn(mu_t.shape, generator=generator or self._gen,
                                                  dtype=mu_t.dtype)
            who = torch.nonzero(free_t).squeeze(-1)
            by_draw = who[torch.argsort((draw[who] - mu_t.median()).abs(), descending=True)]
            direct[by_draw] = direct[who].sort(descending=True).values  # same rates, handed out in the draw's order
        n_direct = int(budget // costs[t])
        cand = p[free_t].sort(descending=True).values
        p_star = float(cand[n_direct - 1]) if 0 < n_direct <= len(cand) else 0.0
        rates = []
        for c in cols:
            if c == t:
                rates.append(direct)
                continue
            r = screening_rate(mu_t, var_t, post.cov[:, c, t], post.cov[:, c, c], float(post.noise[c]), tau,
                               p_star, float(costs[c]), float(costs[t]))
            # screen only where it beats measuring the same gene in the target now: an uninformative context
            # (p' = p_g) would otherwise still score p_g / (kappa_c + kappa_t) and beat other genes' direct rates
            free = torch.as_tensor(space.offered[:, c] & ~measured[:, c]) & free_t & (r > p / costs[t])
            rates.append(torch.where(free, r, -1.0))
        R = torch.stack(rates, -1).numpy()  # G x len(cols)
        return _greedy(R, np.broadcast_to(p.numpy()[:, None], R.shape), space, budget, cols)


def random_target_picks(space: ContextSpace, measured: np.ndarray, budget: float, target: str,
                        rng: np.random.Generator) -> list[ContextPick]:
    """Random genes in the target context while their cost fits `budget` (the baseline)."""
    t = space.context_index(target)
    free = np.flatnonzero(space.offered[:, t] & ~measured[:, t])
    n = min(len(free), int(budget // space.costs[t]))
    return [ContextPick.at(space, g, t) for g in (rng.choice(free, size=n, replace=False) if n else [])]


def variance_per_cost_picks(post: ContextPosterior, space: ContextSpace, measured: np.ndarray,
                            budget: float) -> list[ContextPick]:
    """Objective (c), learning the gene x context matrix: the free pairs of largest posterior variance per unit
    cost, `Sigma_gc,gc / kappa_c`, greedily while their costs fit `budget`, one context per gene a round."""
    var = post.cov.diagonal(dim1=-2, dim2=-1).numpy()  # G x C
    rate = np.where(space.offered & ~measured, var / space.costs[None, :], -1.0)
    return _greedy(rate, rate, space, budget)


def specificity_picks(post: ContextPosterior, space: ContextSpace, measured: np.ndarray, budget: float, *,
                      strong: float = 0.05, weak: float = 0.5, samples: int = 64,
                      generator: torch.Generator | None = None) -> list[ContextPick]:
    """Objective (d), context-specific genes (strong at one context, weak at another, both measured to tell).

    Per context `c`: `hi_c` solves `mean_g P(|f_gc| > hi_c) = strong`, `lo_c` solves `mean_g P(|f_gc| > lo_c) =
    1 - weak`. With `S` joint draws `F_g ~ N(mu_g, Sigma_g)` (`C`-vectors), the evidence in a set `M` of measured
    contexts is `E(M) = [exists a in M: |F_ga| > hi_a] and [exists b in M: |F_gb| < lo_b]`; measuring `c` gains
    `P(E(M_g + c)) - P(E(M_g))` per unit cost, or, as the first step of a plan `c` then `c2`,
    `(P(E(M_g + c + c2)) - P(E(M_g))) / (kappa_c + kappa_c2)`, whichever is larger (one step alone never shows
    anything for a gene with nothing measured); greedily while costs fit `budget`, one context a gene."""
    mean, cov = post.mean, post.cov
    G, C = mean.shape
    hi = torch.tensor([hit_threshold(*post.marginal(c), strong) for c in range(C)], dtype=torch.float64)
    lo = torch.tensor([hit_threshold(*post.marginal(c), 1 - weak) for c in range(C)], dtype=torch.float64)
    L = torch.linalg.cholesky(cov + 1e-10 * cov.diagonal(dim1=-2, dim2=-1).mean() * torch.eye(C, dtype=cov.dtype))
    z = torch.randn(G, C, samples, generator=generator, dtype=torch.float64)
    F = (mean[:, :, None] + L @ z).abs()  # G x C x S
    s_hi, s_lo = F > hi[None, :, None], F < lo[None, :, None]
    M = torch.as_tensor(measured)[:, :, None]

    def evidence(m: torch.Tensor) -> torch.Tensor:  # m: G x C x 1 bool -> G
        return ((s_hi & m).any(1) & (s_lo & m).any(1)).to(torch.float64).mean(-1)

    now = evidence(M)
    one = torch.arange(C)
    costs = torch.as_tensor(space.costs, dtype=torch.float64)
    free = torch.as_tensor(space.offered & ~measured)
    gain = torch.stack([evidence(M | (one == c)[None, :, None]) - now for c in range(C)], -1)  # G x C
    rate = gain / costs
    for c in range(C):  # two-step plans: c now, c2 later (a fresh gene needs two timepoints to show anything)
        for c2 in range(C):
            if c2 != c:
                both = evidence(M | ((one == c) | (one == c2))[None, :, None]) - now
                rate[:, c] = torch.maximum(rate[:, c], torch.where(free[:, c2], both, 0.0) / (costs[c] + costs[c2]))
    rate = np.where(space.offered & ~measured, rate.numpy(), -1.0)
    return _greedy(rate, gain.numpy(), space, budget)


def _greedy(rate: np.ndarray, value: np.ndarray, space: ContextSpace, budget: float,
            cols: Sequence[int] | None = None) -> list[ContextPick]:
    """Pairs in decreasing `rate` (`G x len(cols)`, column `j` the context `cols[j]`, default every context;
    negative = not available) while their costs fit `budget`, one context per gene; `value` (same shape) is
    recorded as the pick's `p_hit` field."""
    cols = list(range(rate.shape[1])) if cols is None else cols
    costs = space.costs[cols]
    picks: list[ContextPick] = []
    used: set[int] = set()
    left = budget
    for flat in np.argsort(-rate.reshape(-1), kind="stable"):
        g, j = divmod(int(flat), rate.shape[1])
        if rate[g, j] < 0 or left < costs.min():
            break
        if g in used or costs[j] > left:
            continue
        picks.append(ContextPick.at(space, g, cols[j], float(rate[g, j]), float(value[g, j])))
        used.add(g)
        left -= costs[j]
    return picks


def random_pair_picks(space: ContextSpace, measured: np.ndarray, budget: float,
                      rng: np.random.Generator) -> list[ContextPick]:
    """Random free (gene, context) pairs while their costs fit `budget`, one context per gene (baseline of (c))."""
    rate = np.where(space.offered & ~measured, rng.random(measured.shape), -1.0)
    return _greedy(rate, np.full(measured.shape, np.nan), space, budget)


def random_gene_picks(space: ContextSpace, measured: np.ndarray, budget: float,
                      rng: np.random.Generator) -> list[ContextPick]:
    """Random genes measured in every context still free for them, while the whole gene fits `budget` (baseline of
    (d): each gene's full profile over time)."""
    costs = space.costs
    picks: list[ContextPick] = []
    left = budget
    for g in rng.permutation(len(space.genes)):
        free = np.flatnonzero(space.offered[g] & ~measured[g])
        if not len(free) or costs[free].sum() > left:
            continue
        picks += [ContextPick.at(space, g, c) for c in free]
        left -= costs[free].sum()
        if left < costs.min():
            break
    return picks
