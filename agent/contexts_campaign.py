"""A campaign across contexts in the one loop: what its runtime context answers differently.

The nodes (agent.nodes) ask a `ContextCampaign` what they ask every campaign; it differs in four answers:

* a candidate is a (gene, context) pair labelled `GENE@@context` (stored as the perturbation: the store keeps the
  context of every proposal, decision, lab job and observation with no new column); only pairs the design space
  offers can be proposed or added (`candidate_labels`);
* the model learns the signed score (the cost-aware policy asks `P(|f| > tau)` of a signed posterior);
* a round spends cost units: round `r` of `R` may spend `(budget - spent) / (R - r)`, at least the dearest allowed
  context's cost (the target can always be bought) and at most what is left (`round_budget`), `spent` summing the cost of every pair measured or
  failed so far; the campaign ends when what is left cannot pay the cheapest allowed context (`can_spend`), when
  the policy can afford nothing it would pick, or when its rounds run out;
* after each round the store's fit record gets the cost spent (in total and per context) and the target hits found.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from acquisition.base import Proposal, ProposedItem
from agent.context import CampaignContext
from perturbloop.contexts import ContextSpace, split_label


class ContextCampaign(CampaignContext):
    space: ContextSpace

    def target(self, value: float) -> float:
        return value

    def candidate_labels(self) -> list[str]:
        """The (gene, context) pairs the design space offers (measured in the screen); approval edits are checked
        against these."""
        return self.space.offered_labels

    @property
    def n_hits(self) -> int | None:
        return len(self.hits) or None

    def spent(self) -> dict[str, float]:
        """Cost units spent per context: every pair measured or failed so far."""
        out = dict.fromkeys(self.space.context_names, 0.0)
        costs = dict(zip(self.space.context_names, self.space.costs))
        for o in self.store.observations(self.campaign_id, include_failed=True):
            ctx = split_label(o.perturbation)[1]
            out[ctx] = out.get(ctx, 0.0) + float(costs.get(ctx, 0.0))
        return out

    def left(self) -> float:
        return self.config.contexts.budget - sum(self.spent().values())

    def cheapest(self) -> float:
        return float(self.space.costs[self.space.check_allowed(self.config.contexts.allowed)].min())

    def can_spend(self) -> bool:
        return self.left() >= self.cheapest()

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
        measured = space.measured_mask([*observed, *pending])
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
        """The round's fit record gets: measured pairs, cost spent (total and `spent:<context>`), target hits found."""
        spent = self.spent()
        obs = self.store.observations(self.campaign_id)
        metrics = {"n_measured": float(len(obs)), "cost_spent": float(sum(spent.values())),
                   "hits_found": float(sum(1 for o in obs if o.perturbation in self.hits)),
                   **{f"spent:{c}": v for c, v in spent.items()}}
        self.store.update_fit_metrics(self.store.get_round(self.campaign_id, index).id, metrics)
