"""The cheap training environment: simulated campaigns in training worlds, tens of ms each.

A deployed campaign refits an exact GP every round over ~19k genes (1-3 s). Training needs
thousands of episodes, so an episode here:

  * runs on a random subsample of `pool_size` genes of the world (default 4,096), with the
    batch scaled so a round picks the same fraction of the pool as the deployed protocol
    (`batch * pool_size / n_world`, e.g. 28 of 4,096 for 128 of 18,877);
  * replaces the per-round hyperparameter fit by fixed, round-matched hyperparameters
    (`GPParams`) recorded once per world from a deployment-like campaign with the real GP
    (`fit_world_gp`: prior round, then greedy rounds, the real surrogate's warm-started fits);
  * computes the exact GP posterior with those hyperparameters in closed form
    (`gp_posterior`, the same model as `surrogates.gp.GPSurrogate`: inputs scaled to the pool
    bounds, `log(y + median y)` target, standardised, RBF-ARD kernel, constant mean,
    Gaussian noise), so the state features are computed exactly as in a campaign.

Reward of a round: new hits / hits in the episode's pool (its sum is the hit ratio).
Synthetic worlds (`synthetic_scores`) give training screens with a known mix of prior-screen
signal, GO-smooth signal, GO modules and heavy-tailed noise on a real gene pool.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from acquisition.rl.features import PoolStatic, pool_static, state_features, subset_static
from acquisition.rl.network import PolicyNet, gumbel_topk, plackett_luce_logp

HIT_FRACTION = 0.05
POOL_SIZE = 4096
MIN_NOISE = 1e-4


@dataclass
class GPParams:
    """Hyperparameters of a fitted `SingleTaskGP` on the standardised-target scale: RBF
    `lengthscale` (`d`), Gaussian `noise` variance and the `constant` mean."""

    lengthscale: list[float]
    noise: float
    constant: float

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> GPParams:
        """Read a fitted BoTorch `SingleTaskGP` (RBF-ARD kernel without outputscale, constant mean)."""
        ls = model.covar_module.lengthscale.detach().reshape(-1).cpu().tolist()
        first = [float(p.detach().reshape(-1)[0]) for p in (model.likelihood.noise, model.mean_module.constant)]
        return cls(ls, *first)


def _unit(X: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    lo, hi = bounds.to(X)
    hi = torch.where(hi - lo > 1e-8, hi, lo + 1.0)  # constant columns, as GPSurrogate
    return (X - lo) / (hi - lo)


def log_target(y: torch.Tensor) -> torch.Tensor:
    """`log(y + median(y))` over the observed targets (`GPSurrogate(target_transform="log")`)."""
    return torch.log(y + y.median().clamp_min(1e-8))


@torch.no_grad()
def gp_posterior(params: GPParams, bounds: torch.Tensor, X_train: torch.Tensor, y_train: torch.Tensor,
                 X_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form posterior mean and latent variance (`n_test` each) of the GP with fixed `params`.

    `X_train` is `m x d`, `y_train` `m` (already target-transformed), `X_test` `n x d`, `bounds` `2 x d`.
    `mu = ybar + s (c + K*^T (K + noise I)^-1 (z - c))`, `var = s^2 (1 - diag(K*^T (K + noise I)^-1 K*))`,
    `z = (y - ybar) / s` (BoTorch `Standardize`), `K = exp(-||x - x'||^2_ls / 2)`.
    """
    ls = torch.tensor(params.lengthscale, dtype=torch.float64)
    A = _unit(X_train.to(torch.float64), bounds) / ls
    B = _unit(X_test.to(torch.float64), bounds) / ls
    y = y_train.to(torch.float64).reshape(-1)
    ybar = y.mean()
    s = y.std().clamp_min(1e-8) if y.numel() > 1 else torch.tensor(1.0, dtype=torch.float64)
    z = (y - ybar) / s - params.constant
    K = torch.exp(-0.5 * torch.cdist(A, A).square())
    K.diagonal().add_(max(params.noise, MIN_NOISE))
    L = torch.linalg.cholesky(K)
    Ks = torch.exp(-0.5 * torch.cdist(A, B).square())  # m x n
    alpha = torch.cholesky_solve(z[:, None], L)
    mean = params.constant + (Ks * alpha).sum(0)
    v = torch.linalg.solve_triangular(L, Ks, upper=False)
    var = (1.0 - v.square().sum(0)).clamp_min(1e-10)
    return ybar + s * mean, s.square() * var


@dataclass
class TrainWorld:
    """A training screen: pool features, the objective per gene, its hits and round-matched GP hyperparameters.

    `X` is `n x d` (standardised pool features, as `perturbloop.features.build_gene_pool`), `y`
    `n` non-negative objective values (|score|), `hits` `n` bool, `gp[t - 1]` the
    hyperparameters of round `t >= 1` (the last entry is reused for later rounds).
    """

    name: str
    X: torch.Tensor
    feature_names: list[str]
    y: torch.Tensor
    hits: torch.Tensor
    gp: list[GPParams] = field(default_factory=list)
    synthetic: bool = False

    def __post_init__(self) -> None:
        self.bounds = torch.stack([self.X.min(0).values, self.X.max(0).values])
        self.static: PoolStatic = pool_static(self.X, self.feature_names)

    def __len__(self) -> int:
        return self.X.shape[0]

    def params(self, t: int) -> GPParams:
        return self.gp[min(t, len(self.gp)) - 1]


def hits_of(y: torch.Tensor, fraction: float = HIT_FRACTION) -> torch.Tensor:
    """`n` bool: the top `fraction` of genes by `y` (ties broken by position, as a stable sort)."""
    n = max(1, int(round(fraction * y.numel())))
    out = torch.zeros(y.numel(), dtype=torch.bool)
    out[np.argsort(-y.numpy(), kind="stable")[:n]] = True
    return out


def training_batch(batch: int, pool_size: int, n_world: int) -> int:
    """The batch that picks the same fraction of a `pool_size` subsample as `batch` of the whole world."""
    return max(2, int(round(batch * min(pool_size, n_world) / n_world)))


@dataclass
class Episode:
    """Per round: the reward (new hits / hits in the pool), and when sampled, the `q` per-draw
    Plackett-Luce log-probabilities and the `q` per-pick rewards (hit / hits in the pool)."""

    rewards: list[float]
    logps: list[torch.Tensor]
    pick_rewards: list[torch.Tensor] = field(default_factory=list)


def run_episode(world: TrainWorld, net: PolicyNet, idx: torch.Tensor, *, rounds: int, batch: int,
                generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                scorer: Callable[[torch.Tensor], torch.Tensor] | None = None, imitate: bool = False) -> Episode:
    """One simulated campaign on the pool rows `idx` of `world`.

    With a `generator` the batch is sampled (Gumbel top-k) and the Plackett-Luce log-probability
    of each round's batch is kept for the policy gradient; without one the top `batch` scores are
    taken (deployment). `scorer` replaces the network (`n x F` features -> `n` scores; e.g. a
    fixed acquisition); with `imitate` the scorer acts greedily and `logps` holds the network's
    log-probability of the scorer's batch in its ranked order (behaviour cloning).
    """
    static = subset_static(world.static, idx)
    X = world.X[idx]
    y = world.y[idx]
    hits = world.hits[idx]
    n_hits = max(1, int(hits.sum()))
    avail = torch.ones(idx.numel(), dtype=torch.bool)
    obs: list[int] = []
    ep = Episode([], [])
    for t in range(rounds):
        q = min(batch, int(avail.sum()))
        obs_t = torch.tensor(obs, dtype=torch.long)
        y_obs = log_target(y[obs_t]) if obs else torch.zeros(0, dtype=torch.float64)
        mean = sd = None
        if len(obs) >= 2:
            mean, var = gp_posterior(world.params(t), world.bounds, X[obs_t], y_obs, X)
            sd = var.sqrt()
        feats = state_features(static, avail, obs_t, y_obs, mean, sd, progress=t / rounds, last_round=t == rounds - 1)
        if scorer is not None:
            scores = scorer(feats)
        elif generator is None:
            with torch.no_grad():
                scores = net(feats.to(device)).cpu()
        else:
            scores = net(feats.to(device))
        av = avail.to(scores.device)
        if generator is None or scorer is not None:  # greedy: the top `q` scores
            picks = scores.detach().double().masked_fill(~av, float("-inf")).topk(q).indices
            if imitate:  # the network's log-probability of the scorer's ranked batch
                ep.logps.append(plackett_luce_logp(net(feats.to(device)), avail.to(device), picks.to(device)))
        else:
            picks = gumbel_topk(scores, av, q, generator)
            ep.logps.append(plackett_luce_logp(scores, av, picks))
        picks = picks.cpu()
        ep.pick_rewards.append(hits[picks].double() / n_hits)
        ep.rewards.append(float(ep.pick_rewards[-1].sum()))
        avail[picks] = False
        obs += picks.tolist()
    return ep


def subsample(n_world: int, pool_size: int, generator: torch.Generator) -> torch.Tensor:
    if pool_size >= n_world:
        return torch.arange(n_world)
    return torch.randperm(n_world, generator=generator)[:pool_size].sort().values


# ---------------------------------------------------------------------------------------------
# world construction


def prior_round(X: torch.Tensor, feature_names: Sequence[str], batch: int, generator: torch.Generator) -> torch.Tensor:
    """Round-1 picks as every fixed policy makes them (`acquisition.prior`): top mean |z| over prior screens, else
    random."""
    cols = [i for i, f in enumerate(feature_names) if f.endswith("_absz")]
    if cols:
        return X[:, cols].mean(dim=1).topk(batch).indices
    return torch.randperm(X.shape[0], generator=generator)[:batch]


def fit_world_gp(X: torch.Tensor, feature_names: Sequence[str], y: torch.Tensor,
                 make_surrogate: Callable[[torch.Tensor, dict | None], object],
                 *, rounds: int, batch: int, seed: int = 0) -> list[GPParams]:
    """Round-matched GP hyperparameters from one deployment-like campaign in a world.

    Round 1 picks by prior (as the fixed policies do), later rounds greedily by posterior mean;
    round `t`'s surrogate is `make_surrogate(bounds, previous params)` (`bounds` = `2 x d` pool
    min / max) fitted on the `|y|` measured so far (the campaign's warm-started fits). Returns the `rounds - 1`
    fitted hyperparameter sets.
    """
    gen = torch.Generator().manual_seed(seed)
    picked = prior_round(X, feature_names, batch, gen)
    avail = torch.ones(X.shape[0], dtype=torch.bool)
    avail[picked] = False
    bounds = torch.stack([X.min(0).values, X.max(0).values])
    params: dict | None = None
    out = []
    for _ in range(1, rounds):
        sur = make_surrogate(bounds, params)
        sur.fit(X[picked], y[picked])
        params = getattr(sur, "params", None)
        out.append(GPParams.from_model(sur.model))
        mean, _ = gp_posterior(out[-1], bounds, X[picked], log_target(y[picked]), X)  # = sur.posterior(X).mean, faster
        nxt = mean.masked_fill(~avail, float("-inf")).topk(batch).indices
        avail[nxt] = False
        picked = torch.cat([picked, nxt])
    return out


def synthetic_scores(X: torch.Tensor, feature_names: Sequence[str], seed: int) -> tuple[np.ndarray, dict]:
    """A synthetic screen on a real gene pool: `s = sum_c sqrt(w_c) standardise(component_c)`.

    Components: prior (a random signed combination of the prior screens' z and |z|), smooth
    (random Fourier features of the GO embedding, random length-scale), modules (a few GO
    neighbourhoods of random genes shifted up or down) and noise (Student t, 3 df); weights
    `w ~ Dirichlet(0.7)`. Returns the scores and the recipe (weights, length-scale).
    """
    rng = np.random.default_rng(seed)
    Xn = X.numpy()
    n = Xn.shape[0]
    z = [i for i, f in enumerate(feature_names) if f.endswith("_z")]
    absz = [i for i, f in enumerate(feature_names) if f.endswith("_absz")]
    go = [i for i, f in enumerate(feature_names) if f.startswith("go_svd")] or list(range(Xn.shape[1]))

    def std(v: np.ndarray) -> np.ndarray:
        sd = v.std()
        return (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)

    comps = {}
    if z or absz:
        cols = z + absz
        comps["prior"] = std(Xn[:, cols] @ rng.normal(size=len(cols)))
    G = Xn[:, go]
    ell = float(rng.uniform(0.3, 1.5) * math.sqrt(len(go)))
    W = rng.normal(scale=1 / ell, size=(len(go), 256))
    comps["smooth"] = std(np.cos(G @ W + rng.uniform(0, 2 * math.pi, 256)) @ rng.normal(size=256))
    mod = np.zeros(n)
    for _ in range(int(rng.integers(3, 12))):
        c = G[rng.integers(n)]
        d = np.linalg.norm(G - c, axis=1)
        member = d <= np.quantile(d, rng.uniform(0.002, 0.01))
        mod[member] += rng.choice([-1.0, 1.0]) * rng.uniform(2, 5)
    comps["modules"] = std(mod)
    comps["noise"] = std(rng.standard_t(3, size=n))
    w = rng.dirichlet([0.7] * len(comps))
    s = sum(math.sqrt(wi) * comps[k] for wi, k in zip(w, comps))
    return s, {"weights": dict(zip(comps, w.round(3).tolist())), "lengthscale": ell}
