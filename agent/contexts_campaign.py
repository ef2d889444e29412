"""A campaign across contexts in the one loop: what its runtime context answers differently.

The nodes (agent.nodes) ask a `ContextCampaign` what they ask every campaign; it differs in four answers:

* a candidate is a (gene, context) pair labelled `GENE@@context` (stored as the perturbation: the store keeps the
  context of every proposal, decision, lab job and observation with no new column); only pairs the design space
  offers can be proposed or added (`candidate_labels`);
* the model learns the signed score (the cost-aware policy asks `P(|f| > tau)` of a signed posterior);
* a round spends cost units: round `r` of `R` may spend `(budget - spent) / (R - r)`, at least the dearest allowed
  context's cost (the target can always be bought) and at most what is left (`round_budget`), `spent` summing the
  cost of every pair measured or failed so far; the campaign ends when what is left cannot pay the cheapest allowed
  context (`can_spend`), when the policy can afford nothing it would pick, or when its rounds run out;
* after each round the store's fit record gets the cost spent (in total and per context), the target hits found
  and what the campaign's goal is scored on (perturbloop.context_objectives; truth for scoring only): goal `matrix`
  the held-out NRMSE and Pearson r per context of the model refit on everything measured (`nrmse:<context>`,
  `pearson:<context>`), goal `specific` the context-specific genes found (`specific_found`, `n_specific`).

Goal `matrix` holds pairs out (`split.test`: never proposed nor offered to an approval edit); the test genes' other
contexts are measured free in the initial design (`free_labels`: they cost nothing).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from acquisition.base import Proposal, ProposedItem
from agent.context import CampaignContext
from perturbloop.context_objectives import context_specific, matrix_errors, specific_found, specific_genes
from perturbloop.contexts import ContextSpace, split_label


class ContextCampaign(CampaignContext):
    space: ContextSpace

    def target(self, value: float) -> float:
        return value

    def candidate_labels(self) -> list[str]:
        """The (gene, context) pairs the design space offers (measured in the screen); approval edits are checked
        against these."""
        test = set(self.split.test)
        return [lab for lab in self.space.offered_labels if lab not in test]

    def free_labels(self) -> set[str]:
        """Goal `matrix`: the held-out genes' other contexts, known from the start at no cost."""
        test = set(self.split.test)
        genes = {split_label(lab)[0] for lab in test}
        return {lab for lab in self.split.initial if split_label(lab)[0] in genes and lab not in test}

    def spent(self) -> dict[str, float]:
        """Cost units spent per context: every pair measured or failed so far."""
        out = dict.fromkeys(self.space.context_names, 0.0)
        costs = dict(zip(self.space.context_names, self.space.costs))
        free = self.free_labels()
        for o in self.store.observations(self.campaign_id, include_failed=True):
            if o.perturbation not in free:
                c = split_label(o.perturbation)[1]
                out[c] = out.get(c, 0.0) + float(costs.get(c, 0.0))
        return out

    def left(self) -> float:
        return self.config.contexts.budget - sum(self.spent().values())

    def can_spend(self) -> bool:
        """Whether what is left pays for one pair of the cheapest allowed context."""
        return self.left() >= float(self.space.costs[self.space.check_allowed(self.config.contexts.allowed)].min())

    def round_budget(self, index: int) -> float:
        """Cost units round `index` may spend: what is left shared equally over the rounds left, at least one pair of
        the dearest allowed context (so the target can always be bought) while the budget lasts."""
        left = self.left()
        dearest = float(self.space.costs[self.space.check_allowed(self.config.contexts.allowed)].max())
        return min(left, max(left / max(1, self.rounds - index), dearest))

    def select(self, surrogate, observed: Mapping[str, object], pending: list[str], index: int) -> Proposal:
        """Round 0: the initial design; then the policy's (gene, context) picks within the round's budget, each with
        the model's prediction in the pair's context and, for the target, its probability of being a hit."""
        if index == 0 and self.split.initial:
            return super().select(surrogate, observed, pending, index)
        space = self.space
        measured = space.measured_mask([*observed, *pending, *self.split.test])
        post = surrogate.joint(space) if surrogate is not None else None
        rng = np.random.default_rng([self.config.seed, index])
        picks = self.policy.picks(post, space, measured, self.round_budget(index), observed=observed,
                                  round_index=index, rounds_left=self.rounds - index, rng=rng)
        target = self.config.contexts.target
        items = []
        for p in picks:
            g, c = space.parse(p.label)
            mean = sd = None
            if post is not None:
                mean, sd = float(post.mean[g, c]), float(post.cov[g, c, c].clamp_min(0).sqrt())
            why = f"{p.context} (cost {p.cost:g})"
            if p.rate == p.rate:  # a model-based pick
                why += f"; P(hit in {target}) = {p.p_hit:.2f}, {p.rate:.3f} expected {target} hits per cost unit"
            items.append(ProposedItem(p.label, mean, sd, None if p.rate != p.rate else p.rate, why))
        return Proposal(self.policy.name, items)

    def after_ingest(self, index: int) -> None:
        """The round's fit record gets: measured pairs, cost spent (total and `spent:<context>`), target hits found,
        the learned correlation of each context with the target (`corr:<context>`, a multi-task model's), and the
        goal's scores (module docstring)."""
        spent = self.spent()
        obs = self.store.observations(self.campaign_id)
        metrics = {"n_measured": float(len(obs)), "cost_spent": float(sum(spent.values())),
                   "hits_found": float(sum(1 for o in obs if o.perturbation in self.hits)),
                   **{f"spent:{c}": v for c, v in spent.items()}}
        names = self.space.context_names
        fitted = self.cache.get("model")
        inner = getattr(fitted["model"], "model", None) if fitted and fitted["round"] == index else None
        if getattr(inner, "model", None) is not None and hasattr(inner, "task_correlation"):
            t = self.space.context_index(self.config.contexts.target)
            corr = inner.task_correlation()
            metrics.update({f"corr:{c}": float(corr[i, t]) for i, c in enumerate(names) if i != t})
        goal = self.config.contexts.goal
        if goal == "matrix":
            model, _ = self._fitted(self.training_data(), index + 1)  # the next round's model, kept in the cache
            if model is not None:
                errors = matrix_errors(model.joint(self.space).mean.numpy(), self._truth(),
                                       self.space.measured_mask(self.split.test), names)
                for c, e in errors.items():
                    metrics.update({f"nrmse:{c}": e["nrmse"], f"pearson:{c}": e["pearson"]})
        elif goal == "specific":
            strong, weak = context_specific(self._truth())
            found = specific_found(strong, weak, self.space.measured_mask([o.perturbation for o in obs]))
            metrics.update({"specific_found": float(len(found)),
                            "n_specific": float(len(specific_genes(strong, weak)))})
        self.store.update_fit_metrics(self.store.get_round(self.campaign_id, index).id, metrics)

    def _truth(self) -> np.ndarray:
        """The world's published scores, `G x C` over the design space (NaN: not measured); scoring only."""
        if "truth" not in self.cache:
            space = self.space
            labels = [space.label(g, c) for g in range(len(space.genes)) for c in range(len(space.contexts))]
            self.cache["truth"] = self.world.truth(labels).to_numpy().reshape(len(space.genes), len(space.contexts))
        return self.cache["truth"]
