"""A response campaign (Perturb-seq singles, gene pairs) as a context of the same LangGraph loop.

`perturbloop run examples/papalexi_learn.toml` drives the loop of `agent.graph` (fit > propose >
review > dispatch > collect > ingest, checkpointed, every step in the store) with this context
in place of a screen campaign's:

- round 0 runs the initial design (`initial` random perturbations, seeded; no model yet);
  rounds 1..`rounds` are chosen by the policy (`acquisition.kind`) from the surrogate refit on
  every response measured so far (vectors in the store's `ResponseVector` table);
- the simulated lab is `SimulatorLab` over the configured world (held-out cells of a Perturb-seq
  data set, the synthetic GRN, or the Norman 2019 pair screen); pair campaigns know the singles
  up front (the additive prior);
- a held-out set of perturbations (`evaluation.test_fraction`, seeded by `seed`) is never run;
  after each round is ingested the refit surrogate is scored on it (`perturbloop.response_metrics`)
  beside the baselines fitted on the same observations (`<metric>@<baseline>`), and the scores
  are written to the round's ModelFit record.

The pieces (`response_parts`) are those of the simulated evaluation (`agent.benchmark.campaign_for`):
a campaign run here measures the same perturbations, and scores the same, as seed `seed` of its
policy in `perturbloop benchmark --config` (tested).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from acquisition.base import Proposal, ProposedItem
from acquisition import make_policy as make_acquisition_policy
from lab_adapters import LabAdapter, LabError, LabResult, SimulatorLab, make_lab
from lab_adapters.base import response_value
from perturbloop.design import Split, build_space, prepare_singles, split_candidates
from perturbloop.errors import LabResultError, PerturbloopError, StoreError
from perturbloop.perturbation import CONTROL
from perturbloop.design_space import DesignSpace
from perturbloop.config import CampaignConfig
from perturbloop.response_metrics import Evaluation, prepare_evaluation, program_flags, program_weights, response_metrics
from perturbloop.responses import summarise_delivery
from perturbloop.store import Store
from simulators.response_worlds import ResponseWorld, build_world
from surrogates import make_surrogate
from surrogates.response import fit_on_space, predict_on_space

SUMMARY_METRICS = ("mse_top20_de", "pearson_delta", "l2_top_expressed", "interaction_pearson", "hit_ratio")


@dataclass
class ResponseCampaignContext:
    config: CampaignConfig
    store: Store
    world: ResponseWorld
    space: DesignSpace
    split: Split
    evaluation: Evaluation
    lab: LabAdapter
    policy: Any  # acquisition.response policy
    make_model: Callable[[int], Any]
    baselines: list[str]
    make_baseline: Callable[[str], Any]
    on_round: Callable[[dict], None] | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def campaign_id(self) -> str:
        return self.config.name

    @property
    def rounds(self) -> int:
        """Round 0 (the initial design) plus the policy's rounds."""
        return self.config.rounds + 1

    @property
    def approval(self) -> str:
        return self.config.approval

    @property
    def scored(self) -> bool:
        """Whether the model is scored on held-out perturbations: only where the world is also the lab (a real
        lab's campaign has no truth to score against)."""
        return self.config.lab.kind == "simulator"

    def candidate_labels(self) -> list[str]:
        """Every perturbation the design space offers (approval edits are checked against these)."""
        return self.space.labels

    def summarise_results(self, results: dict[str, LabResult | LabError], source: str) -> dict[str, LabResult | LabError]:
        """A lab's results as response vectors over the world's readout genes: cells (a Perturb-seq delivery)
        are summarised against the delivery's control cells (`perturbloop.responses.summarise_delivery`); a
        vector of the wrong length is refused. Raises a LabResultError naming `source`."""
        readout = list(self.world.genes)
        control = results.pop(CONTROL, None)
        with_cells = {k: r for k, r in results.items() if isinstance(r, LabResult) and r.cells is not None
                      and r.response is None}
        if with_cells:
            try:
                lfc = summarise_delivery({k: r.cells for k, r in with_cells.items()},
                                         control.cells if isinstance(control, LabResult) else None, readout,
                                         min_cells=self.config.world.min_cells, source=source)
            except PerturbloopError as e:
                raise LabResultError(str(e)) from None
            for k, y in lfc.items():
                results[k] = LabResult(k, response_value(y.tolist()), [],
                                       response=y.tolist())
        for k, r in results.items():
            if isinstance(r, LabResult) and r.response is None and len(readout) == 1 and r.value is not None:
                results[k] = LabResult(k, r.value, r.replicates, response=[float(r.value)])
            elif isinstance(r, LabResult) and (r.response is None or len(r.response) != len(readout)):
                got = "no response vector" if r.response is None else f"a response of {len(r.response)} values"
                raise LabResultError(f"{source}: {k} came back with {got}; this campaign reads out "
                                     f"{len(readout)} genes ({', '.join(readout[:5])}{', ...' if len(readout) > 5 else ''})")
        return results

    @property
    def n_hits(self) -> int | None:
        return len(self.evaluation.hits) or None

    def is_hit(self, perturbation: str, value: float | None) -> bool | None:
        return perturbation in self.evaluation.hits if self.scored and self.evaluation.hits else None

    # the loop's questions ------------------------------------------------------------------------
    def training_data(self) -> dict[str, np.ndarray]:
        """Measured response vectors of the design space, in measurement order."""
        out: dict[str, np.ndarray] = {}
        width = len(self.world.genes)
        for lab, values in self.store.responses(self.campaign_id).items():
            if len(values) != width:
                raise StoreError(f"campaign {self.campaign_id!r}: stored response of {lab} has {len(values)} values, "
                                 f"the world reads out {width} genes")
            out[lab] = np.asarray(values, dtype=np.float64)
        return out

    def _model_seed(self, n_batches: int) -> int:
        # the evaluation harness's seeds: the model fitted after `n_batches` measured batches (initial = 1)
        return self.config.seed * 1000 + n_batches - 1

    def fit_model(self, observed: dict[str, np.ndarray], index: int):
        """The surrogate refit on everything measured before round `index` (None before any data)."""
        cached = self.cache.get("fit")
        if cached is not None and cached["round"] == index and cached["observed"].keys() == observed.keys():
            return cached["surrogate"]
        if not observed:
            return None
        return fit_on_space(self.make_model(self._model_seed(index)), self.space, observed)

    def score_model(self, surrogate, observed: dict[str, np.ndarray]) -> dict[str, float]:
        return {}  # scored after each ingest (`after_ingest`), on the held-out perturbations

    def select(self, surrogate, observed: dict[str, np.ndarray], pending: list[str], index: int) -> Proposal:
        if index == 0:
            note = f"initial design (random, seed {self.config.seed})"
            return Proposal("initial", [ProposedItem(lab, None, None, None, note) for lab in self._initial(pending)])
        # held-out perturbations are never proposed: they score the model
        return self.policy.select(surrogate, self.space, observed, self.config.batch_size,
                                  [*pending, *self.split.test])

    def _initial(self, pending: list[str]) -> list[str]:
        """The initial design less `pending` (rejected or vetoed picks), each replaced by the next of a seeded
        random order of the other candidates (never held-out ones)."""
        out = set(pending)
        keep = [lab for lab in self.split.initial if lab not in out]
        if len(keep) == len(self.split.initial):
            return keep
        taken = out | set(self.split.initial) | set(self.split.test)
        spare = [lab for lab in self.candidate_labels() if lab not in taken]
        order = np.random.default_rng([self.config.seed, 13]).permutation(len(spare))
        return keep + [spare[i] for i in order[: len(self.split.initial) - len(keep)]]

    def after_ingest(self, index: int) -> None:
        """Refit on everything measured so far, score on the held-out set beside the baselines, store
        the scores with round `index`; the fit is reused by the next round's `fit`."""
        r = self.store.get_round(self.campaign_id, index)
        observed = self.training_data()
        t0 = time.perf_counter()
        model = self.fit_model(observed, index + 1)
        fit_seconds = time.perf_counter() - t0
        metrics: dict[str, float] = {"n_measured": float(len(observed))}
        if model is not None and self.scored:
            metrics.update(self._scores(model, observed))
        self.cache["fit"] = {"round": index + 1, "surrogate": model, "observed": observed,
                             "fit_seconds": fit_seconds, "metrics": {}}
        self.store.update_fit_metrics(r.id, metrics)

    def _scores(self, model, observed: dict[str, np.ndarray]) -> dict[str, float]:
        ev = self.evaluation
        out = dict(response_metrics(predict_on_space(model, self.space, ev.test_idx), ev.truth, de_idx=ev.de,
                                    expressed_idx=ev.expressed, additive=ev.additive))
        for b in self.baselines:
            bm = fit_on_space(self.make_baseline(b), self.space, observed)
            for k, v in response_metrics(predict_on_space(bm, self.space, ev.test_idx), ev.truth, de_idx=ev.de,
                                         expressed_idx=ev.expressed).items():
                out[f"{k}@{b}"] = v
        if ev.hits:
            out["hit_ratio"] = len(ev.hits & set(observed)) / len(ev.hits)
            out["best_score"] = max((ev.scores.get(k, -np.inf) for k in observed), default=float("nan"))
        return {k: float(v) for k, v in out.items()}

    def summary(self, index: int) -> dict:
        """One row of the round table: the store's counts plus the held-out scores after this round."""
        from agent.report import summarise_round

        row = summarise_round(self.store, self.campaign_id, index, n_hits=self.n_hits)
        r = self.store.get_round(self.campaign_id, index)
        fit = self.store.model_fit(r.id) if r is not None else None
        row["metrics"] = dict(fit.metrics or {}) if fit is not None else {}
        return row


@dataclass
class ResponseParts:
    """Everything one seed of a response campaign is made of (shared by the loop and the benchmark)."""

    world: ResponseWorld
    space: DesignSpace
    split: Split
    evaluation: Evaluation
    policy: Any  # an acquisition.response policy
    make_model: Callable[[int], Any]  # seed -> unfitted surrogate
    baselines: list[str]
    make_baseline: Callable[[str], Any]  # kind -> unfitted baseline


def response_parts(config: CampaignConfig, seed: int, data_dir: str | os.PathLike | None = None, *,
                   policy_kind: str | None = None, space: DesignSpace | None = None) -> ResponseParts:
    """A fresh world, the design space, seed `seed`'s held-out split and evaluation, the policy
    (`policy_kind`, default the config's) and the model factories; bad input raises here.

    With a real lab (`lab.kind` not `simulator`) the world is the reference data set that defines the
    candidates, their features and the readout genes; nothing is held out and nothing is scored.
    """
    data_dir = str(data_dir) if data_dir else None
    world = build_world(config, data_dir)
    space = space if space is not None else build_space(world, config, data_dir)
    prepare_singles(world, space)
    scored = config.lab.kind == "simulator"
    split = split_candidates(space, config, seed, held_out=scored)
    w = program_weights(world, config) if config.objective == "maximize" else None
    if scored:
        ev = prepare_evaluation(world, space, config, split, w)
    else:
        ev = Evaluation([], torch.zeros(0, dtype=torch.long), np.zeros((0, len(world.genes))), None, [], None)
    baselines = list(config.evaluation.baselines)
    if ev.additive is not None and "additive" not in baselines:
        baselines.append("additive")
    # additive needs an additive prediction (pairs of a fitness readout); the model is not its own baseline
    baselines = [b for b in baselines if b != config.surrogate.kind and (b != "additive" or ev.additive is not None)]
    policy = make_policy(policy_kind or config.acquisition.kind, config, world, seed)
    return ResponseParts(world, space, split, ev, policy, model_factory(config), baselines,
                         lambda k: model_factory(config, k)(seed))


def build_response_context(config: CampaignConfig, store: Store, data_dir: str | os.PathLike | None = None,
                           on_round: Callable[[dict], None] | None = None) -> ResponseCampaignContext:
    """World, design space, held-out split, policy and models of a response campaign (bad input raises
    before anything is written)."""
    p = response_parts(config, config.seed, data_dir)
    lab = SimulatorLab(p.world) if config.lab.kind == "simulator" else make_lab(config.lab)
    return ResponseCampaignContext(config, store, p.world, p.space, p.split, p.evaluation, lab, p.policy,
                                   p.make_model, p.baselines, p.make_baseline, on_round)


def make_policy(kind: str, config: CampaignConfig, world: ResponseWorld, seed: int):
    """The response policy `kind` with the config's settings (`program`: the program's weights over readouts)."""
    a = config.acquisition
    if kind == "program":
        interaction, absolute = program_flags(config)
        return make_acquisition_policy(kind, "response", weights=program_weights(world, config), beta=a.beta,
                                       interaction=interaction, absolute=absolute, max_per_gene=a.max_per_gene,
                                       seed=seed)
    return make_acquisition_policy(kind, "response", seed=seed, max_per_gene=a.max_per_gene)


def model_factory(config: CampaignConfig, kind: str | None = None) -> Callable[[int], object]:
    """`seed -> ResponseSurrogate`: the config's surrogate, or (`kind` given) a baseline with its own
    defaults, so a baseline is the same whatever model it is shown beside."""
    if kind is not None and kind != config.surrogate.kind:
        kw: dict = {}
    else:
        kind = config.surrogate.kind
        kw = config.surrogate.kwargs() if kind in ("ensemble", "gp") else {}
        if kind == "linear":
            kw = {"rank": config.surrogate.rank}

    def make(seed: int):
        return make_surrogate(kind, "response", **({**kw, "seed": seed} if kind == "ensemble" else kw))

    return make
