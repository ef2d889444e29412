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
from lab_adapters import LabAdapter, SimulatorLab
from perturbloop.config import CampaignConfig
from perturbloop.data import REGISTRY, load_screen
from perturbloop.data.registry import get_spec
from perturbloop.data.screens import Screen
from perturbloop.errors import ConfigError, PerturbloopError, UnknownGeneError
from perturbloop.genes import gene_index
from perturbloop.features import build_gene_pool, essential_genes
from perturbloop.perturbation import CandidatePool
from perturbloop.store import Store
from simulators import ScreenReplay
from surrogates import Surrogate, make_surrogate


@dataclass
class CampaignContext:
    config: CampaignConfig
    store: Store
    pool: CandidatePool
    lab: LabAdapter
    policy: AcquisitionPolicy
    make_surrogate: Callable[[dict], Surrogate]  # init_params (warm start) -> unfitted surrogate
    world: ScreenReplay | None = None  # simulated campaigns only: scoring, never seen by the policy
    on_round: Callable[[dict], None] | None = None
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


def derived_from(a: str, b: str) -> bool:
    """Two registry screens that share a source file (e.g. tau up / tau down) count as one."""
    fa = {f.path for f in get_spec(a).files}
    fb = {f.path for f in get_spec(b).files}
    return bool(fa & fb)


def default_prior_screens(target: str) -> list[str]:
    """Every registry screen except the target and anything derived from it."""
    names = [n for n, s in REGISTRY.items() if s.kind == "screen"]
    if target not in REGISTRY:
        return names
    return [n for n in names if not derived_from(n, target)]


def load_world(config: CampaignConfig, data_dir: str | os.PathLike | None) -> tuple[Screen, set[str]]:
    screen = load_screen(config.data.screen, data_dir)
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
        names = d.prior_screens if d.prior_screens is not None else default_prior_screens(config.data.screen)
        bad = [n for n in names if n == config.data.screen or (config.data.screen in REGISTRY and n in REGISTRY and derived_from(n, config.data.screen))]
        if bad:
            raise ConfigError(f"design.prior_screens: {', '.join(bad)} is the target screen (or derived from it): that would leak its scores")
        prior = [load_screen(n, data_dir) for n in names]
    if "embedding" in d.features and not d.embeddings:
        raise ConfigError("design.embeddings: feature 'embedding' needs a file")
    pool = build_gene_pool(screen.genes, features=d.features, prior_screens=prior, data_dir=data_dir,
                           go_dims=d.go_dims, gaf=d.gaf, embeddings=d.embeddings)
    if pool.X.shape[1] == 0:
        raise ConfigError("design.features: no features selected")
    world = ScreenReplay(screen, noise=config.lab.noise, hit_fraction=config.data.hit_fraction, seed=config.seed)
    if config.lab.kind != "simulator":  # pragma: no cover - guarded by the config schema
        raise PerturbloopError(f"lab.kind {config.lab.kind!r} is not available yet")
    lab = SimulatorLab(world)
    bounds = torch.stack([pool.X.min(0).values, pool.X.max(0).values])
    s = config.surrogate

    def _surrogate(init_params: dict | None = None) -> Surrogate:
        return make_surrogate(s.kind, bounds=bounds, max_iter=s.max_iter, init_params=init_params,
                              target_transform=s.target_transform)

    policy = make_policy(config.acquisition.kind, seed=config.seed, beta=config.acquisition.beta)
    return CampaignContext(config, store, pool, lab, policy, _surrogate, world, on_round)
