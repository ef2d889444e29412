"""Everything a campaign needs that never changes while it runs: store, pool, lab, model, policy.

Built once per process from the config (`build_context`) and handed to the LangGraph loop as its
runtime context; only plain values live in the checkpointed state.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from acquisition import AcquisitionPolicy, make_policy
from lab_adapters import LabAdapter, make_lab
from perturbloop.config import CampaignConfig
from perturbloop.data import load_screen
from perturbloop.data.priors import prior_screen_names
from perturbloop.data.screens import Screen
from perturbloop.errors import ConfigError, UnknownGeneError
from perturbloop.genes import gene_index
from perturbloop.features import build_gene_pool, essential_genes
from perturbloop.design_space import SingleSpace
from perturbloop.store import Store
from simulators import ScreenReplay
from surrogates import Surrogate, make_surrogate


@dataclass
class CampaignContext:
    config: CampaignConfig
    store: Store
    pool: SingleSpace
    lab: LabAdapter
    policy: AcquisitionPolicy
    make_surrogate: Callable[[dict], Surrogate]  # init_params (warm start) -> unfitted surrogate
    world: ScreenReplay | None = None  # simulated campaigns only: scoring, never seen by the policy
    on_round: Callable[[dict], None] | None = None
    score: bool = True  # score the model on the unmeasured genes each round (evaluation only; benchmarks skip it)
    cache: dict[str, Any] = field(default_factory=dict)  # fitted surrogate of the current round

    @property
    def campaign_id(self) -> str:
        return self.config.name

    def objective(self, value: float) -> float:
        """The scalar the surrogate models: |readout| for hit discovery, the readout for `maximize`."""
        return abs(value) if self.config.objective == "hits" else value

    def is_hit(self, perturbation: str, value: float | None) -> bool | None:
        if self.world is not None:
            return perturbation in self.world.hits
        return None

    # what the loop's nodes ask of a campaign (agent.nodes); a response campaign answers the same
    # questions for response vectors (agent.response_context)
    @property
    def rounds(self) -> int:
        """Rounds of the loop (each: fit, propose, review, dispatch, collect, ingest)."""
        return self.config.rounds

    @property
    def approval(self) -> str:
        return self.config.approval

    @property
    def n_hits(self) -> int | None:
        return len(self.world.hits) if self.world is not None else None

    @property
    def hit_threshold(self) -> float:
        """|value| at or above which a measured gene is a hit: `data.hit_threshold`, else the screen's cut-off."""
        t = self.config.data.hit_threshold
        if t is None and self.world is not None:
            t = self.world.hit_threshold
        if t is None or t != t:
            raise ConfigError("surrogate.target = 'hit_call' needs data.hit_threshold (no screen defines the hits)")
        return float(t)

    def training_data(self) -> dict[str, float]:
        """Measured perturbations of the design space -> the modelled scalar: `objective(value)`, or the hit
        call `1[|value| >= hit_threshold]` with `surrogate.target = 'hit_call'`."""
        obs = [o for o in self.store.observations(self.campaign_id)
               if o.value is not None and o.perturbation in self.pool.index]
        if self.config.surrogate.target == "hit_call":
            t = self.hit_threshold
            return {o.perturbation: float(abs(o.value) >= t) for o in obs}
        return {o.perturbation: self.objective(o.value) for o in obs}

    def fit_model(self, observed: dict[str, float], index: int) -> Surrogate | None:
        """The surrogate refit on `observed` (warm-started from the last stored fit); None under 2 points or
        when every target is the same (e.g. no hit called yet): then the policy ranks by priors."""
        if len(observed) < 2 or len(set(observed.values())) < 2 or not getattr(self.policy, "uses_model", True):
            return None  # a model-free policy (random, coreset) needs no fit
        surrogate = self.make_surrogate(self.store.latest_params(self.campaign_id, self.config.surrogate.kind))
        idx = self.pool.indices(list(observed))
        surrogate.fit(self.pool.X[idx], torch.tensor(list(observed.values()), dtype=torch.float64))
        return surrogate

    def score_model(self, surrogate: Surrogate | None, observed: dict[str, float]) -> dict[str, float]:
        """Evaluation only (a simulated world): Spearman of the posterior mean on the genes not yet measured."""
        if surrogate is None or self.world is None or not self.score:
            return {}
        import numpy as np
        from scipy.stats import spearmanr

        unmeasured = [lab for lab in self.pool.labels if lab not in observed]
        post = surrogate.posterior(self.pool.X[self.pool.indices(unmeasured)])
        truth = self.world.truth(unmeasured).map(self.objective).to_numpy()
        ok = ~np.isnan(truth)
        return {"spearman_unmeasured": float(spearmanr(post.mean.numpy()[ok], truth[ok]).statistic)}

    def select(self, surrogate: Surrogate | None, observed: dict[str, float], pending: list[str], index: int):
        """The policy's proposal for round `index` (a `acquisition.base.Proposal`)."""
        return self.policy.select(surrogate, self.pool, observed, self.config.batch_size, pending)

    def candidate_labels(self) -> list[str]:
        """Every perturbation the design space offers (approval edits are checked against these)."""
        return self.pool.labels

    def summarise_results(self, results: dict, source: str) -> dict:
        """A screen's results are its readouts as they came (cells are refused by `collect`)."""
        return results

    def after_ingest(self, index: int) -> None:
        """Called once a round is ingested (a response campaign scores its model here)."""

    def summary(self, index: int) -> dict:
        """One row of the per-round table, read back from the store."""
        from agent.report import summarise_round

        return summarise_round(self.store, self.campaign_id, index, n_hits=self.n_hits)


def load_world(config: CampaignConfig, data_dir: str | os.PathLike | None) -> tuple[Screen, set[str]]:
    screen = load_screen(config.data.screen, data_dir, aggregate=config.data.aggregate)
    excluded: set[str] = set()
    if config.data.nonessential:
        excluded = essential_genes(data_dir) & set(screen.genes)
        screen = screen.subset([g for g in screen.genes if g not in excluded])
    return screen, excluded


def design_genes(config: CampaignConfig, screen: Screen, data_dir) -> list[str]:
    """The design space: every gene of the screen, or `design.genes` (mapped to HGNC, all must be in the screen)."""
    spec = config.design.genes
    if spec is None:
        return screen.genes
    if isinstance(spec, str):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"design.genes: file {spec!r} does not exist")
        spec = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not spec:
        raise ConfigError("design.genes: the gene list is empty")
    genes = gene_index(data_dir).canonical(spec, context="in design.genes", allowed=screen.genes)
    in_screen = set(screen.genes)
    outside = [g for g, m in zip(spec, genes) if m not in in_screen]
    if outside:
        raise UnknownGeneError(outside, f"in design.genes (not measured in screen {screen.name})")
    return list(dict.fromkeys(genes))


def build_context(config: CampaignConfig, store: Store, data_dir: str | os.PathLike | None = None,
                  on_round: Callable[[dict], None] | None = None) -> CampaignContext:
    screen, _ = load_world(config, data_dir)
    genes = design_genes(config, screen, data_dir)
    if len(genes) < len(screen.genes):
        screen = screen.subset(genes)
    d = config.design
    prior: list[Screen] = []
    if "screens" in d.features:
        names = prior_screen_names(config.data.screen, d.prior_screens)
        prior = [load_screen(n, data_dir) for n in names]
    if "embedding" in d.features and not d.embeddings:
        raise ConfigError("design.embeddings: feature 'embedding' needs a file")
    pool = build_gene_pool(screen.genes, features=d.features, prior_screens=prior, data_dir=data_dir,
                           go_dims=d.go_dims, gaf=d.gaf, embeddings=d.embeddings, phenotype=d.phenotype,
                           prior_terms=d.prior_terms, known_positives=d.known_positives, prior_share=d.prior_share)
    if pool.X.shape[1] == 0:
        raise ConfigError("design.features: no features selected")
    # the world scores every campaign whose screen is known (hits, Spearman); only a simulator lab runs it
    world = ScreenReplay(screen, noise=config.lab.noise, hit_fraction=config.data.hit_fraction, seed=config.seed)
    lab = make_lab(config.lab, world)
    bounds = torch.stack([pool.X.min(0).values, pool.X.max(0).values])
    s = config.surrogate

    def _surrogate(init_params: dict | None = None) -> Surrogate:
        return make_surrogate(s.kind, bounds=bounds, max_iter=s.max_iter, init_params=init_params,
                              target_transform=s.target_transform)

    policy = make_policy(config.acquisition.kind, seed=config.seed, beta=config.acquisition.beta,
                         policy_path=config.acquisition.policy_path, rounds=config.rounds)
    ctx = CampaignContext(config, store, pool, lab, policy, _surrogate, world, on_round)
    if s.target == "hit_call":
        ctx.hit_threshold  # noqa: B018 - raises a ConfigError now, before anything is stored
    return ctx
