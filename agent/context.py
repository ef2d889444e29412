"""Everything a campaign needs that never changes while it runs: store, world, design space, lab, policy, model.

One context for every kind of campaign: a pooled screen is the one-readout case of a response campaign.
Its world reads out one value per gene (`readouts = ["score"]`), its design space is the gene pool and its
model the exact GP of that one readout (`G = 1`); a Perturb-seq campaign reads out a response vector over
`G` genes, a pair screen one phenotype per pair. The loop's nodes (agent.nodes) ask every campaign the same
questions: what was measured (`training_data`), the model fitted on it (`fit_model`), the next batch
(`select`), a lab's results as responses (`summarise_results`), the scores after a round (`after_ingest`).
What differs is data the parts carry (agent.parts): the held-out perturbations and the initial design
(`split`), the hits and how the model is scored (`scorer`).

Built once per process (`build_context`) and handed to the LangGraph loop as its runtime context; only
plain values live in the checkpointed state.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from acquisition import AcquisitionPolicy
from acquisition.base import Proposal, ProposedItem
from agent.parts import ModelFactory, campaign_parts, campaign_policy, model_factory
from agent.scoring import HeldOutScores, UnmeasuredSpearman
from lab_adapters import LabAdapter, LabError, LabResult, make_lab
from lab_adapters.base import response_value
from perturbloop.config import CampaignConfig
from perturbloop.design import Split
from perturbloop.design_space import DesignSpace
from perturbloop.errors import ConfigError, LabResultError, PerturbloopError, StoreError
from perturbloop.perturbation import CONTROL
from perturbloop.responses import summarise_delivery
from perturbloop.store import Store
from simulators.world import World
from surrogates.response import fit_on_space


@dataclass
class CampaignContext:
    config: CampaignConfig
    store: Store
    world: World  # its `readouts` name a response's entries; a simulated world's truth never reaches the policy
    space: DesignSpace
    lab: LabAdapter
    policy: AcquisitionPolicy
    make_model: ModelFactory  # (seed, warm-start params) -> unfitted surrogate
    split: Split = field(default_factory=lambda: Split([], []))  # held out (never proposed), initial design
    hits: frozenset[str] = frozenset()  # what counts as a hit (empty: no hit calls)
    scorer: UnmeasuredSpearman | HeldOutScores | None = None  # scores the refit model after each round
    on_round: Callable[[dict], None] | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # the latest fitted surrogate

    @property
    def campaign_id(self) -> str:
        return self.config.name

    @property
    def rounds(self) -> int:
        """Rounds of the loop (each: fit, propose, review, dispatch, collect, ingest): round 0 runs the initial
        design when there is one, then `config.rounds` rounds of the policy."""
        return self.config.rounds + (1 if self.split.initial else 0)

    @property
    def n_hits(self) -> int | None:
        return len(self.hits) or None

    @property
    def hit_threshold(self) -> float:
        """|value| at or above which a measured gene is a hit: `data.hit_threshold`, else the screen's cut-off."""
        t = self.config.data.hit_threshold if self.config.data is not None else None
        if t is None:
            t = getattr(self.world, "hit_threshold", None)
        if t is None or t != t:
            raise ConfigError("surrogate.target = 'hit_call' needs data.hit_threshold (no screen defines the hits)")
        return float(t)

    def target(self, value: float) -> float:
        """What the model learns of a one-readout response: the readout (`maximize`), |readout| (`hits`), or with
        `surrogate.target = 'hit_call'` the hit call `1[|value| >= hit_threshold]`."""
        if self.config.surrogate.target == "hit_call":
            return float(abs(value) >= self.hit_threshold)
        return abs(value) if self.config.objective == "hits" else value

    def candidate_labels(self) -> list[str]:
        """Every perturbation the design space offers (approval edits are checked against these)."""
        return self.space.labels

    def can_spend(self) -> bool:
        """Whether the campaign can pay for another round (a campaign across contexts has a budget in cost units)."""
        return True

    # what the loop's nodes ask (agent.nodes) ---------------------------------------------------------
    def training_data(self) -> dict[str, float | np.ndarray]:
        """The measured responses, in measurement order, as the model learns them: a response of `G` readouts as
        its vector, a one-readout response as one number (`target(value)`)."""
        width = len(self.world.readouts)
        vectors = self.store.responses(self.campaign_id)  # a stored screen value has none: the value is its response
        out: dict[str, float | np.ndarray] = {}
        for o in self.store.observations(self.campaign_id):
            y = vectors.get(o.perturbation, [o.value])
            if len(y) != width:
                raise StoreError(f"campaign {self.campaign_id!r}: stored response of {o.perturbation} has {len(y)} "
                                 f"values, the world reads out {width}")
            out[o.perturbation] = self.target(y[0]) if width == 1 else np.asarray(y, dtype=np.float64)
        return out

    def fit_model(self, observed: Mapping[str, object], index: int) -> tuple[Any, float]:
        """The surrogate round `index` proposes with, fitted on `observed`, and the seconds its fit took: None for
        a model-free policy (random, coreset)."""
        if not getattr(self.policy, "uses_model", True):
            return None, 0.0
        return self._fitted(observed, index)

    def _fitted(self, observed: Mapping[str, object], index: int) -> tuple[Any, float]:
        """The model fitted on `observed` for round `index` (warm-started from the campaign's last stored fit,
        seeded by the round), kept until the next fit: the refit after a round is the next round's model. None
        before two different responses are measured (the policy then ranks by priors)."""
        c = self.cache.get("model")
        if c is not None and c["round"] == index and c["labels"] == list(observed):
            return c["model"], c["seconds"]
        t0 = time.perf_counter()
        model = None
        Y = [np.atleast_1d(v) for v in observed.values()]
        if len(Y) >= 2 and any((y != Y[0]).any() for y in Y[1:]):
            # model seeds as in the evaluation harness: the fit after `index` measured batches
            model = self.make_model(self.config.seed * 1000 + index - 1,
                                    self.store.latest_params(self.campaign_id, self.config.surrogate.kind))
            fit_on_space(model, self.space, observed)
        seconds = time.perf_counter() - t0
        self.cache["model"] = {"round": index, "labels": list(observed), "model": model, "seconds": seconds}
        return model, seconds

    def select(self, surrogate, observed: Mapping[str, object], pending: list[str], index: int) -> Proposal:
        """The proposal for round `index`: the initial design in round 0 when there is one, else the policy's
        batch; held-out perturbations are never proposed (they score the model)."""
        if index == 0 and self.split.initial:
            note = f"initial design (random, seed {self.config.seed})"
            return Proposal("initial", [ProposedItem(lab, None, None, None, note) for lab in self._initial(pending)])
        return self.policy.select(surrogate, self.space, observed, self.config.batch_size, [*pending, *self.split.test])

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

    def summarise_results(self, results: dict[str, LabResult | LabError],
                          source: str) -> dict[str, LabResult | LabError]:
        """A lab's results as responses over the world's readouts: cells (a Perturb-seq delivery) are summarised
        against the delivery's control cells (`perturbloop.responses.summarise_delivery`), a one-readout value is
        its own response, a response of the wrong length is refused. Raises a LabResultError naming `source`."""
        readout = list(self.world.readouts)
        control = results.pop(CONTROL, None)
        cells = {k: r.cells for k, r in results.items()
                 if isinstance(r, LabResult) and r.cells is not None and r.response is None}
        if cells and self.config.world is None:
            raise LabResultError(f"{source}: {', '.join(list(cells)[:5])} came back as cells (Perturb-seq); a pooled "
                                 "screen needs a value per perturbation (a results CSV)")
        if cells:
            try:
                lfc = summarise_delivery(cells, control.cells if isinstance(control, LabResult) else None, readout,
                                         min_cells=self.config.world.min_cells, source=source)
            except PerturbloopError as e:
                raise LabResultError(str(e)) from None
            results.update({k: LabResult(k, response_value(y), [], response=y.tolist()) for k, y in lfc.items()})
        for k, r in results.items():
            if isinstance(r, LabResult) and r.response is None and len(readout) == 1 and r.value is not None:
                results[k] = replace(r, response=[float(r.value)])
            elif isinstance(r, LabResult) and (r.response is None or len(r.response) != len(readout)):
                got = "no response vector" if r.response is None else f"a response of {len(r.response)} values"
                shown = ", ".join(readout[:5]) + (", ..." if len(readout) > 5 else "")
                raise LabResultError(f"{source}: {k} came back with {got}; this campaign reads out "
                                     f"{len(readout)} genes ({shown})")
        return results

    def after_ingest(self, index: int) -> None:
        """Once round `index` is ingested: the number measured and, with a scorer, the scores of the model refit on
        everything measured so far, merged into the round's ModelFit record (recomputed the same after a crash)."""
        observed = self.training_data()
        metrics: dict[str, float] = {"n_measured": float(len(observed))}
        if self.scorer is not None:
            model, _ = self._fitted(observed, index + 1)
            if model is not None:
                metrics.update(self.scorer.score(model, observed))
        self.store.update_fit_metrics(self.store.get_round(self.campaign_id, index).id, metrics)

    def summary(self, index: int) -> dict:
        """One row of the per-round table, read back from the store."""
        from agent.report import summarise_round

        return summarise_round(self.store, self.campaign_id, index, n_hits=self.n_hits)


def build_context(config: CampaignConfig, store: Store, data_dir: str | os.PathLike | None = None,
                  on_round: Callable[[dict], None] | None = None, *,
                  space: DesignSpace | None = None) -> CampaignContext:
    """The context of `config`'s campaign, any kind (agent.parts); `space`: a response campaign's design space
    built earlier. Bad input raises before anything is stored."""
    p = campaign_parts(config, data_dir, space=space)
    kind = CampaignContext
    if config.is_contexts:  # (gene, context) pairs within a cost budget
        from agent.contexts_campaign import ContextCampaign as kind
    ctx = kind(config, store, p.world, p.space, make_lab(config.lab, p.world), campaign_policy(config, p.world),
               model_factory(config, p.space, data_dir=data_dir), p.split, p.hits, p.scorer, on_round)
    if config.surrogate.target == "hit_call":
        ctx.hit_threshold  # noqa: B018 - raises a ConfigError now, before anything is stored
    if not config.is_response:
        ctx.cache["explain"] = evidence_tables(ctx, data_dir)
    return ctx


def evidence_tables(ctx: CampaignContext, data_dir: str | os.PathLike | None = None) -> dict | None:
    """What `agent.nodes` needs to name each proposed gene's evidence (`perturbloop.explain`): the knowledge tables,
    read on first use (prior screens among them when the `screens` features are on), and the hit cut-off; None
    without a cut-off."""
    from perturbloop.data.priors import prior_screen_names
    from perturbloop.explain import knowledge_for

    try:
        threshold = ctx.hit_threshold
    except ConfigError:
        return None
    design = ctx.config.design
    names = prior_screen_names(ctx.config.data.screen, design.prior_screens) if "screens" in design.features else []
    return {"knowledge": partial(knowledge_for, str(data_dir) if data_dir else None, tuple(names)),
            "hit_threshold": threshold}
