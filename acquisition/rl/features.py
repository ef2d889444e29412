"""Per-candidate state features of the RL policy, the same in training worlds and in campaigns.

Every feature is scale-free (a quantile, an empirical CDF, a z-score over the pool or a
probability), so a policy trained on a subsampled pool with a cheap fixed-hyperparameter GP
(`acquisition.rl.env`) sees the same distribution of features as one deployed on a 19k-gene
pool with the campaign's refitted GP. Quantiles are ranks among the available (not observed,
not pending) candidates, `rank / (n_avail - 1)`; `ecdf_obs(v)` is the fraction of observed
(transformed) values below `v`.

Columns (`FEATURES`, `n x F`):

  progress        rounds done / rounds planned (`t / T`), the same for every candidate
  last_round      1 in the last planned round (no later round to exploit what is learnt now)
  has_model       1 once a surrogate is fitted (round 1 is scored from priors alone)
  mean_q, sd_q    quantiles of the posterior mean and sd
  mean_z, sd_z    the same standardised over the available candidates (clipped to +-5)
  ucb_q           quantile of `mu + 2 sigma`
  prob_hit        `Phi((mu - tau) / sigma)`, `tau` = 95% quantile of `mu` (`acquisition.prob_hit`)
  mean_ecdf       `ecdf_obs(mu)`: where the prediction sits among the measured values
  sd_rel          `sigma / sd(observed)` (clipped to 5)
  near_dist_q     quantile of the distance to the nearest measured gene (feature space)
  near_ecdf       `ecdf_obs` rank of the nearest measured gene's value
  knn_ecdf        mean `ecdf_obs` rank of the `K_NEAREST` nearest measured genes
  prior_z         mean standardised |z| over the prior screens (the round-1 prior score), z-scored
  prior_q         its quantile over the pool
  prior_max_z     max over prior screens of the standardised |z|, z-scored
  prior_strong    fraction of prior screens where the standardised |z| > 2
  prior_missing   fraction of prior screens that did not measure the gene
  go_missing      1 for a gene without GO annotation
  has_prior       1 when the pool has prior-screen features
  prior_skill     Spearman(prior score, observed value) over the measured genes (global)
  knn_skill       Spearman(observed value, mean of its `K_NEAREST` measured neighbours) (global)

Features that need a model or observations are 0 before there is one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FEATURES = (
    "progress", "last_round", "has_model",
    "mean_q", "sd_q", "mean_z", "sd_z", "ucb_q", "prob_hit", "mean_ecdf", "sd_rel",
    "near_dist_q", "near_ecdf", "knn_ecdf",
    "prior_z", "prior_q", "prior_max_z", "prior_strong", "prior_missing", "go_missing", "has_prior",
    "prior_skill", "knn_skill",
)
K_NEAREST = 5
HIT_QUANTILE = 0.95  # prob_hit threshold: the top 5% of predicted means (ProbHitPolicy's default)
UCB_SD = 2.0  # ucb_q uses mu + 2 sigma (UCB beta = 4, the project default)
CLIP = 5.0
DIST_CHUNK = 4096  # candidate rows per cdist call: 4096 x 512 observed is 8 MB in float32


@dataclass
class PoolStatic:
    """What never changes during a campaign: prior-screen summaries and the distance space.

    `prior` is `n x 7` (prior_z .. has_prior), `Xd` is `n x d` float32 (pool features / sqrt(d)).
    """

    prior: torch.Tensor
    Xd: torch.Tensor

    def __len__(self) -> int:
        return self.prior.shape[0]


def _zscore(v: torch.Tensor) -> torch.Tensor:
    sd = v.std() if v.numel() > 1 else torch.tensor(0.0)
    return ((v - v.mean()) / sd if float(sd) > 1e-12 else torch.zeros_like(v)).clamp(-CLIP, CLIP)


def _ranks01(v: torch.Tensor) -> torch.Tensor:
    """Ranks of `v` scaled to [0, 1] (0 = smallest)."""
    n = v.numel()
    r = torch.empty(n, dtype=torch.float32)
    r[v.argsort()] = torch.arange(n, dtype=torch.float32)
    return r / max(1, n - 1)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two `m` vectors; 0 when undefined (m < 3 or a constant vector)."""
    if a.numel() < 3:
        return 0.0
    ra, rb = _ranks01(a) - 0.5, _ranks01(b) - 0.5
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 1e-12 else 0.0


def pool_static(X: torch.Tensor, feature_names: list[str]) -> PoolStatic:
    """Prior-screen summaries from the pool's standardised `<screen>_absz` / `<screen>_missing`
    columns (`perturbloop.features.screen_features`) and `go_missing`; `X` is `n x d`."""
    n = X.shape[0]
    absz = [i for i, f in enumerate(feature_names) if f.endswith("_absz")]
    miss = [i for i, f in enumerate(feature_names) if f.endswith("_missing") and f != "go_missing"]
    go_miss = [i for i, f in enumerate(feature_names) if f == "go_missing"]
    X32 = X.to(torch.float32)
    prior = torch.zeros(n, 7)
    if absz:
        A = X32[:, absz]
        score = A.mean(dim=1)
        prior[:, 0] = _zscore(score)
        prior[:, 1] = _ranks01(score)
        prior[:, 2] = _zscore(A.max(dim=1).values)
        prior[:, 3] = (A > 2).float().mean(dim=1)
        prior[:, 6] = 1.0
    if miss:
        prior[:, 4] = (X32[:, miss] > 0).float().mean(dim=1)  # a standardised 0/1 flag is > 0 where it was 1
    if go_miss:
        prior[:, 5] = (X32[:, go_miss[0]] > 0).float()
    return PoolStatic(prior, (X32 / max(1, X.shape[1]) ** 0.5).contiguous())


def state_features(static: PoolStatic, avail: torch.Tensor, obs_idx: torch.Tensor, y_obs: torch.Tensor,
                   mean: torch.Tensor | None, sd: torch.Tensor | None, *, progress: float,
                   last_round: bool) -> torch.Tensor:
    """`n x F` float32 features (columns `FEATURES`; see module docstring).

    Args:
        static: the pool's `PoolStatic` (`n` candidates).
        avail: `n` bool, candidates that may be picked.
        obs_idx: `m` long, pool rows of the measured genes.
        y_obs: `m` observed values on the surrogate's scale (after its target transform).
        mean, sd: `n` posterior mean and sd on the same scale, or None before a model exists.
        progress: rounds done / rounds planned; last_round: this is the last planned round.
    """
    n = len(static)
    F = torch.zeros(n, len(FEATURES))
    F[:, 0] = float(progress)
    F[:, 1] = float(last_round)
    F[:, 14:21] = static.prior
    a = avail.nonzero().squeeze(-1)
    m = int(obs_idx.numel())
    y = y_obs.to(torch.float64).reshape(-1)
    y_sorted = y.sort().values
    Xo = static.Xd[obs_idx]
    if mean is not None and sd is not None and a.numel():
        mu, s = mean.to(torch.float64), sd.to(torch.float64).clamp_min(1e-12)
        F[:, 2] = 1.0
        F[a, 3] = _ranks01(mu[a])
        F[a, 4] = _ranks01(s[a])
        F[a, 5] = _zscore(mu[a].float())
        F[a, 6] = _zscore(s[a].float())
        F[a, 7] = _ranks01(mu[a] + UCB_SD * s[a])
        tau = torch.quantile(mu, HIT_QUANTILE)
        F[:, 8] = torch.special.ndtr((mu - tau) / s).float()
        if m:
            F[:, 9] = (torch.searchsorted(y_sorted, mu.contiguous()).float() / m)
            if m > 1:
                F[:, 10] = (s / y.std().clamp_min(1e-12)).clamp(max=CLIP).float()
    if m and a.numel():
        y_rank = _ranks01(y) if m > 1 else torch.full((1,), 0.5)
        k = min(K_NEAREST, m)
        dmin, nearest = [], []  # per available candidate: distance to the nearest measured gene, k nearest
        for start in range(0, a.numel(), DIST_CHUNK):
            top = torch.cdist(static.Xd[a[start:start + DIST_CHUNK]], Xo).topk(k, largest=False)
            dmin.append(top.values[:, 0])
            nearest.append(top.indices)
        j = torch.cat(nearest)
        F[a, 11] = _ranks01(torch.cat(dmin))
        F[a, 12] = y_rank[j[:, 0]]
        F[a, 13] = y_rank[j].mean(dim=1)
    if m >= 3:
        if float(static.prior[0, 6]) > 0:
            F[:, 21] = spearman(static.prior[obs_idx, 0], y)
        d = torch.cdist(Xo, Xo)
        d.fill_diagonal_(float("inf"))
        j = d.topk(min(K_NEAREST, m - 1), largest=False).indices
        F[:, 22] = spearman(y, y[j].mean(dim=1))
    return F


def subset_static(static: PoolStatic, idx: torch.Tensor) -> PoolStatic:
    """The rows `idx` of a `PoolStatic` (prior z-scores and quantiles stay those of the whole pool)."""
    return PoolStatic(static.prior[idx], static.Xd[idx])


def reference_score(kind: str, feats: torch.Tensor) -> torch.Tensor:
    """A fixed acquisition expressed on the state features (`n x F` -> `n`), for imitation warm
    starts and reference runs in training worlds: `greedy` (posterior-mean rank), `ucb`
    (`mu + 2 sigma` rank), `prob_hit`, each with the prior score before a model exists, or
    `prior` (the prior score throughout)."""
    prior = feats[:, FEATURES.index("prior_q")]
    if kind == "prior":
        return prior.clone()
    col = {"greedy": "mean_q", "ucb": "ucb_q", "prob_hit": "prob_hit"}.get(kind)
    if col is None:
        raise ValueError(f"unknown reference policy {kind!r}; choose greedy, ucb, prob_hit or prior")
    return torch.where(feats[:, FEATURES.index("has_model")] > 0, feats[:, FEATURES.index(col)], prior)
