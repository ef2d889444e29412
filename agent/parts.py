"""What a campaign is made of, built from its config: world, design space, split, hits, scorer, policy, model.

Every kind of campaign is made of the same parts; only where they come from differs. A pooled screen
(`[data]`) replays its screen (`ScreenReplay`, one readout per gene) over a gene pool of prior-knowledge
features, and its model is the exact GP of that one readout; a response campaign (`[world]`) runs a
Perturb-seq, synthetic or pair world over a design space of single genes or pairs, holds out test
perturbations (`evaluation.test_fraction`, seeded) and starts from an `initial` random design. Bad input
raises here, before anything is stored.

With a real lab (`lab.kind` not `simulator`) a response campaign's world is the reference data set that
defines the candidates, their features and the readout genes; nothing is held out and nothing is scored. A
screen's reference screen always defines its hits and scores its model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from acquisition import AcquisitionPolicy, make_policy
from agent.scoring import HeldOutScores, UnmeasuredSpearman
from perturbloop.config import CampaignConfig
from perturbloop.data import load_screen
from perturbloop.data.priors import prior_screen_names
from perturbloop.data.screens import Screen
from perturbloop.design import Split, build_space, prepare_singles, split_candidates
from perturbloop.design_space import DesignSpace, SingleSpace
from perturbloop.errors import ConfigError, UnknownGeneError
from perturbloop.features import build_gene_pool, essential_genes
from perturbloop.genes import gene_index, read_gene_file
from perturbloop.response_metrics import prepare_evaluation, program_flags, program_weights
from simulators import ScreenReplay
from simulators.response_worlds import build_world
from simulators.world import World
from surrogates import make_surrogate
from surrogates.registry import network_spec

ModelFactory = Callable[[int, dict], object]  # (seed, warm-start params) -> unfitted surrogate


@dataclass
class CampaignParts:
    world: World  # the readouts; a simulated world's truth is for hits and scores only
    space: DesignSpace
    split: Split  # held out (never proposed) and the initial design (round 0)
    hits: frozenset[str]  # what counts as a hit (empty: no hit calls)
    scorer: UnmeasuredSpearman | HeldOutScores | None  # scores the refit model after each round


def campaign_kind(config: CampaignConfig) -> str:
    """The registries' name for the campaign's kind: `screen` (one readout per gene), `contexts` ((gene, context)
    pairs within a cost budget) or `response`."""
    return "contexts" if config.is_contexts else "response" if config.is_response else "screen"


def campaign_parts(config: CampaignConfig, data_dir: str | os.PathLike | None = None, *,
                   space: DesignSpace | None = None) -> CampaignParts:
    """The parts of `config`'s campaign (`space`: a response campaign's design space built earlier)."""
    data_dir = str(data_dir) if data_dir else None
    if config.is_contexts:
        return contexts_parts(config, data_dir, space)
    return response_parts(config, data_dir, space) if config.is_response else screen_parts(config, data_dir)


def screen_parts(config: CampaignConfig, data_dir: str | None) -> CampaignParts:
    """The screen (less core-essential genes with `data.nonessential`) over the design genes, their gene pool,
    the screen's hits, and the Spearman of the model on the genes left; `initial` random genes first if set."""
    screen = load_screen(config.data.screen, data_dir, aggregate=config.data.aggregate)
    if config.data.nonessential:
        essential = essential_genes(data_dir)
        screen = screen.subset([g for g in screen.genes if g not in essential])
    genes = design_genes(config, screen, data_dir)
    if len(genes) < len(screen.genes):
        screen = screen.subset(genes)
    d = config.design
    prior = ([load_screen(n, data_dir) for n in prior_screen_names(config.data.screen, d.prior_screens)]
             if "screens" in d.features else [])
    if "embedding" in d.features and not d.embeddings:
        raise ConfigError("design.embeddings: feature 'embedding' needs a file")
    pool = build_gene_pool(screen.genes, features=d.features, prior_screens=prior, data_dir=data_dir,
                           go_dims=d.go_dims, gaf=d.gaf, embeddings=d.embeddings, phenotype=d.phenotype,
                           prior_terms=d.prior_terms, known_positives=d.known_positives, prior_share=d.prior_share)
    if pool.X.shape[1] == 0:
        raise ConfigError("design.features: no features selected")
    world = ScreenReplay(screen, noise=config.lab.noise, hit_fraction=config.data.hit_fraction, seed=config.seed)
    split = split_candidates(pool, config, config.seed, held_out=False) if config.initial else Split([], [])
    truth = world.truth(pool.labels)
    scorer = UnmeasuredSpearman(pool, truth.abs() if config.objective == "hits" else truth)
    return CampaignParts(world, pool, split, world.hits, scorer)


def design_genes(config: CampaignConfig, screen: Screen, data_dir) -> list[str]:
    """The design space: every gene of the screen, or `design.genes` (a list or a file, mapped to HGNC, all in the
    screen)."""
    spec = config.design.genes
    if spec is None:
        return screen.genes
    if isinstance(spec, str):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"design.genes: file {spec!r} does not exist")
        spec = read_gene_file(path)
    if not spec:
        raise ConfigError("design.genes: the gene list is empty")
    return list(dict.fromkeys(genes_in_screen(spec, screen.genes, data_dir, "design.genes")))


def genes_in_screen(raw: list[str], genes: list[str], data_dir, where: str) -> list[str]:
    """`raw` symbols mapped to HGNC; one that is not among the screen's `genes` is an UnknownGeneError naming it and
    `where` it was named."""
    mapped = gene_index(data_dir).canonical(raw, context=f"in {where}", allowed=genes)
    inside = set(genes)
    outside = [r for r, m in zip(raw, mapped) if m not in inside]
    if outside:
        raise UnknownGeneError(outside, f"in {where} (not in the screen)")
    return mapped


def response_parts(config: CampaignConfig, data_dir: str | None, space: DesignSpace | None = None) -> CampaignParts:
    """A fresh world, its design space (pairs know their singles: the additive prior), seed `config.seed`'s
    held-out split and initial design, and the held-out scores beside the baselines (simulator labs only)."""
    world = build_world(config, data_dir)
    space = space if space is not None else build_space(world, config, data_dir)
    prepare_singles(world, space)
    scored = config.lab.kind == "simulator"
    split = split_candidates(space, config, config.seed, held_out=scored)
    if not scored:
        return CampaignParts(world, space, split, frozenset(), None)
    w = program_weights(world, config) if config.objective == "maximize" else None
    ev = prepare_evaluation(world, space, config, split, w)
    names = list(dict.fromkeys([*config.evaluation.baselines, *(["additive"] if ev.additive is not None else [])]))
    # additive needs an additive prediction (pairs of a fitness readout); the model is not its own baseline
    names = [b for b in names if b != config.surrogate.kind and (b != "additive" or ev.additive is not None)]
    baselines = {b: partial(model_factory(config, space, b), config.seed, {}) for b in names}
    return CampaignParts(world, space, split, frozenset(ev.hits), HeldOutScores(space, ev, baselines))


def contexts_parts(config: CampaignConfig, data_dir: str | None, space: DesignSpace | None = None) -> CampaignParts:
    """A campaign across contexts: the multi-context screen (`world.dataset`) on the `[contexts]` (and
    `design.genes` when given) replayed by `ContextReplay`, the design space of its (gene, context) pairs (offered =
    measured in the screen), the initial design (`initial` random genes in every context they were measured in,
    drawn among genes measured in every context when there are enough), and the hits: `GENE@@target` for the top
    `contexts.hit_fraction` genes by |score| in the target (or `world.hits`). Goal `matrix` holds out one context of
    `contexts.test_genes` genes (perturbloop.context_objectives.heldout_design, seeded by `10000 + seed`): those
    pairs are never proposed and the genes' other contexts lead the initial design (measured free)."""
    from perturbloop.context_objectives import heldout_design
    from perturbloop.contexts import context_space, load_context_screen, pair_label
    from simulators.context_replay import context_world

    t = config.contexts
    genes = None
    if config.design.genes is not None:
        genes = design_genes(config, load_context_screen(config.world.dataset, data_dir), data_dir)
    world = context_world(config, data_dir, genes=genes)
    if space is None:
        space = context_space(world.screen, t.context_list(), features=config.design.features, data_dir=data_dir,
                              go_dims=config.design.go_dims)
    held = np.zeros(space.offered.shape, bool)
    if t.goal == "matrix":
        try:
            held = heldout_design(space.offered, t.test_genes, np.random.default_rng(10_000 + config.seed))
        except ValueError as e:
            raise ConfigError(f"contexts.test_genes: {e}") from None
    taken = held.any(1)
    test = [space.label(g, c) for g, c in zip(*np.nonzero(held))]
    known = [space.label(g, c) for g, c in zip(*np.nonzero(space.offered & ~held & taken[:, None]))]
    rng = np.random.default_rng(config.seed)
    everywhere = np.flatnonzero(space.offered.all(1) & ~taken)
    n = config.initial or 0
    pool = everywhere if len(everywhere) >= n else \
        np.flatnonzero(space.offered[:, space.context_index(t.target)] & ~taken)
    chosen = rng.choice(pool, size=min(n, len(pool)), replace=False) if n else []
    initial = known + [space.label(g, c) for g in chosen for c in np.flatnonzero(space.offered[g])]
    return CampaignParts(world, space, Split(test, initial), frozenset(pair_label(g, t.target) for g in world.hits),
                         None)


def campaign_policy(config: CampaignConfig, world: World) -> AcquisitionPolicy:
    """The policy `acquisition.kind` with the config's settings; `program` scores the program's weights over the
    world's readouts (perturbloop.response_metrics.program_weights)."""
    a = config.acquisition
    if config.is_contexts:
        return context_policy(config)
    program: dict = {}
    if a.kind == "program":
        interaction, absolute = program_flags(config)
        program = {"weights": program_weights(world, config), "interaction": interaction, "absolute": absolute}
    return make_policy(a.kind, campaign_kind(config), seed=config.seed, beta=a.beta, policy_path=a.policy_path,
                       rounds=config.rounds, max_per_gene=a.max_per_gene, **program)


def context_policy(config: CampaignConfig):
    """The `[contexts]` campaign's policy `acquisition.kind` (acquisition.context_policies)."""
    from acquisition.context_policies import (GOAL_POLICIES, CheapFirstPolicy, CostAwareContextPolicy, GoalPolicy,
                                              RandomContextPolicy)

    t, kind = config.contexts, config.acquisition.kind
    if kind in GOAL_POLICIES:
        return GoalPolicy(kind)
    if kind == "random":
        return RandomContextPolicy(t.target, allowed=t.allowed)
    if kind == "cheap_first":
        return CheapFirstPolicy(t.target, config.rounds, first_round=1 if config.initial else 0, allowed=t.allowed)
    return CostAwareContextPolicy(t.target, hit_fraction=t.hit_fraction, allowed=t.allowed)


def model_factory(config: CampaignConfig, space: DesignSpace, kind: str | None = None,
                  data_dir: str | os.PathLike | None = None) -> ModelFactory:
    """`(seed, warm-start params) -> surrogate`: the config's model, or (`kind` given) a baseline with its own
    defaults, so a baseline is the same whatever model it is shown beside. A model takes what it uses of the
    config's settings (a screen GP: the pool's feature bounds, `max_iter`, `target_transform`, warm starts;
    an ensemble: its seed)."""
    if config.is_contexts:  # the context models (surrogates.context_model), on the (gene, context) space
        from surrogates.context_model import ContextModel

        name = kind or config.surrogate.kind
        return lambda seed, params: ContextModel(name, space, max_iter=config.surrogate.max_iter, seed=seed)
    kw: dict = {}
    if kind is None or kind == config.surrogate.kind:
        kind, s = config.surrogate.kind, config.surrogate
        bounds = torch.stack([space.X.min(0).values, space.X.max(0).values]) if isinstance(space, SingleSpace) else None
        kw = {"bounds": bounds, "max_iter": s.max_iter, "target_transform": s.target_transform, **s.kwargs()}
        if s.network and isinstance(space, SingleSpace):  # the STRING network kernel, its spec built once here
            kw["network"] = network_spec(s, space, data_dir)
    campaign = campaign_kind(config)
    return lambda seed, params: make_surrogate(kind, campaign, seed=seed, init_params=params, **kw)

