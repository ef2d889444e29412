"""Scientist approval: the pending proposal of a paused campaign, and validated decisions.

A campaign with `approval = "required"` stops in `review` (a LangGraph interrupt kept in the
checkpointer). `decide` validates an approval, edit or rejection against the store and the
design space *before* anything is written; `run_campaign(..., resume=decision)` then records it
and continues the loop to the next pause or the end. A rejection does not use up the round: the
round is proposed again without the rejected perturbations. A vetoed perturbation is never
proposed again in the campaign (`Store.vetoes`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from perturbloop.context_labels import PAIR_SEP, pair_label, split_label
from perturbloop.errors import PerturbloopError, UnknownGeneError
from perturbloop.store import Decision, Proposal, Round, Store, display_url


class DecisionConflictError(PerturbloopError):
    """A decision that cannot be recorded as made: it names a proposal that is not (or no longer) the
    one awaiting approval, or another decision on it was recorded first."""


def proposal_id(r: Round, props: Sequence[Proposal]) -> str:
    """The id of a stored proposal, `<round id>-<digest>`: the digest covers the campaign, the round
    and the proposed perturbations in order, so any other proposal (the next round's, or a new batch
    for the same round) has another id. A reviewer's decision carries the id of what they saw."""
    content = json.dumps([r.campaign_id, r.id, r.index, [p.perturbation for p in props]])
    return f"{r.id}-{hashlib.sha256(content.encode()).hexdigest()[:16]}"


def pending_round(store: Store, campaign_id: str) -> Round | None:
    """The round whose proposal waits for a decision, if any."""
    if store.get_campaign(campaign_id) is None:
        raise PerturbloopError(f"no campaign {campaign_id!r} in {display_url(store.url)}")
    for r in reversed(store.rounds(campaign_id)):
        if r.status == "proposed" and store.decision(r.id) is None:
            return r
    return None


def pending_proposal(store: Store, campaign_id: str, expected: str | None = None) -> tuple[Round, list[Proposal]]:
    """The pending round and its proposal. `expected`: the id (`proposal_id`) a decision was made on; a
    DecisionConflictError names what is pending when it is not that one, or when nothing is pending any more."""
    r = pending_round(store, campaign_id)
    if r is None:
        status = store.get_campaign(campaign_id).status
        if expected is None:
            raise PerturbloopError(f"campaign {campaign_id!r} has no proposal awaiting approval (status: {status})")
        raise DecisionConflictError(f"campaign {campaign_id!r} has no proposal awaiting approval any more "
                                    f"(status: {status}): reload to see what was decided")
    props = store.proposals(r.id)
    if expected is not None and proposal_id(r, props) != expected:
        raise DecisionConflictError(f"this decision was made on a proposal that is no longer pending: campaign "
                                    f"{campaign_id!r} now awaits a decision on its round {r.index + 1} proposal "
                                    f"(id {proposal_id(r, props)}); reload and review it first")
    return r, props


def canonical_labels(items: Sequence[str], candidates: Sequence[str], context: str, data_dir=None) -> list[str]:
    """Perturbations as a scientist typed them (`GENE`, or `A+B` for a pair; symbols mapped to HGNC) in their
    canonical labels. Raises, naming them, for unknown genes and for a single gene where the candidates are
    pairs (or a pair where they are single genes)."""
    if not items:
        return []
    if candidates and PAIR_SEP in next(iter(candidates)):
        return context_labels(items, candidates, context, data_dir)
    genes = sorted({g for c in candidates for g in c.split("+")})
    parts = [[p for p in str(item).split("+") if p.strip()] or [str(item)] for item in items]
    from perturbloop.genes import gene_index  # pandas: not imported by `review` and `status`

    mapped = iter(gene_index(data_dir).canonical([g for ps in parts for g in ps], context=context, allowed=genes))
    out = ["+".join(sorted({next(mapped) for _ in ps})) for ps in parts]  # each item's genes, mapped in turn
    pairs = bool(candidates) and all("+" in c for c in candidates)
    what = "a single gene in a pairs campaign (name a pair, e.g. A+B)" if pairs else "a pair in a single-gene campaign"
    _refuse(f"{context}: {what}", [item for item, lab in zip(items, out) if ("+" in lab) != pairs])
    return out


def context_labels(items: Sequence[str], candidates: Sequence[str], context: str, data_dir=None) -> list[str]:
    """(gene, context) pairs as a scientist typed them, `GENE@@context` (gene symbols mapped to HGNC), in their
    canonical labels. Raises, naming them, for an item that is not `GENE@@context`, an unknown context, an unknown
    gene, and a gene the design space does not offer in that context (not measured there)."""
    from perturbloop.genes import gene_index

    pairs = [split_label(c) for c in candidates]
    contexts = list(dict.fromkeys(c for _, c in pairs))
    try:
        parts = [split_label(str(item).strip()) for item in items]
    except ValueError:
        bad = [str(i) for i in items if PAIR_SEP not in str(i)]
        raise PerturbloopError(f"{context}: name a gene in a context, GENE{PAIR_SEP}context (contexts: "
                               f"{', '.join(contexts)}): {', '.join(bad)}") from None
    unknown = [f"{item} (unknown context {c!r})" for item, (_, c) in zip(items, parts) if c not in contexts]
    if unknown:
        raise PerturbloopError(f"{context}: {', '.join(unknown)}; the campaign's contexts are {', '.join(contexts)}")
    genes = sorted({g for g, _ in pairs})
    mapped = gene_index(data_dir).canonical([g for g, _ in parts], context=context, allowed=genes)
    out = [pair_label(g, c) for g, (_, c) in zip(mapped, parts)]
    offered, known = set(candidates), set(genes)
    _refuse(context, [f"{item} ({g} is not in the design space)" if g not in known else
                      f"{item} (the design space does not offer {g} in {c}: not measured there)"
                      for item, g, (_, c), lab in zip(items, mapped, parts, out) if lab not in offered])
    return out


def _refuse(what: str, named: Sequence[str]) -> None:
    """A PerturbloopError `what: a, b, ...` naming the items of a decision that cannot be taken, if any."""
    if named:
        raise PerturbloopError(f"{what}: {', '.join(named)}")


def decide(store: Store, campaign_id: str, candidates: Sequence[str], *, drop: Sequence[str] = (), add: Sequence[str] = (),
           veto: Sequence[str] = (), reject: bool = False, note: str = "", by: str = "scientist", data_dir=None,
           proposal: str | None = None) -> dict:
    """A decision for the pending round: `approved`, `edited` (genes dropped / added / vetoed) or `rejected`.

    `drop` takes a perturbation out of this batch only ("not now"); `veto` rules it out for the rest of the
    campaign (dropped from this batch if it is in it, never proposed again); a rejected batch is proposed
    again without its perturbations. `proposal`: the id (`proposal_id`) of the proposal the decision was
    made on; DecisionConflictError if another one is pending. Raises, naming the genes, for: a dropped gene
    that is not in the proposal; an added or vetoed gene that is unknown or outside the design space; an
    added gene that is already measured, already proposed, vetoed, or vetoed in the same decision. The
    decision's `seen` is the batch it was made on (`Store.save_decision` takes it for that batch only).
    """
    proposed = [p.perturbation for p in pending_proposal(store, campaign_id, proposal)[1]]
    offered = set(candidates)
    veto_c = canonical_labels(veto, candidates, "in --veto", data_dir)
    outside = [v for v, c in zip(veto, veto_c) if c not in offered]
    if outside:
        raise UnknownGeneError(outside, "in --veto (outside the campaign's design space)")
    vetoed = list(dict.fromkeys(veto_c))
    if reject:
        if drop or add:
            raise PerturbloopError("--reject cannot be combined with --drop or --add")
        return {"action": "rejected", "by": by, "note": note, "added": [], "dropped": [], "final": [],
                "vetoed": vetoed, "seen": proposed}
    pairs_in_contexts = bool(proposed) and PAIR_SEP in proposed[0]  # GENE@@context: any offered pair may be named
    drop_c = canonical_labels(drop, candidates if pairs_in_contexts else proposed, "in --drop", data_dir)
    _refuse("--drop: not in the pending proposal", [d for d, c in zip(drop, drop_c) if c not in proposed])
    add_c = canonical_labels(add, candidates, "in --add", data_dir)
    outside = [a for a, c in zip(add, add_c) if c not in offered]
    if outside:
        raise UnknownGeneError(outside, "in --add (outside the campaign's design space)")
    measured = {o.perturbation for o in store.observations(campaign_id, include_failed=True)}
    _refuse("--add: already measured in this campaign", [a for a, c in zip(add, add_c) if c in measured])
    earlier = {v.perturbation: v for v in store.vetoes(campaign_id)}
    _refuse("--add: vetoed in this campaign", [f"{a} (vetoed by {earlier[c].by}"
                                               f"{': ' + earlier[c].note if earlier[c].note else ''})"
                                               for a, c in zip(add, add_c) if c in earlier])
    _refuse("--add and --veto name the same perturbation", [a for a, c in zip(add, add_c) if c in vetoed])
    _refuse("--add: already in the proposal", [a for a, c in zip(add, add_c) if c in proposed and c not in drop_c])
    out = set(drop_c) | set(vetoed)
    dropped = [p for p in proposed if p in out]
    added = list(dict.fromkeys(add_c))
    final = [p for p in proposed if p not in out] + added
    if not final:
        raise PerturbloopError("the edited batch is empty: use --reject to reject the proposal")
    return {"action": "edited" if (dropped or add_c) else "approved", "by": by, "note": note, "added": added,
            "dropped": dropped, "final": final, "vetoed": vetoed, "seen": proposed}


def record_decision(store: Store, round_id: int, decision: dict) -> tuple[Decision, bool]:
    """Store `decision` (from `decide`) on the round's pending proposal, with its vetoes; returns the stored
    decision and whether it was this one (False: another decision on the proposal was recorded first, or the
    batch it was made on, its `seen`, was rejected and the round proposed again)."""
    fields = {k: v for k, v in decision.items() if k not in ("vetoed", "seen")}
    mine = Decision(round_id=round_id, **fields)
    stored = store.save_decision(mine, vetoed=decision.get("vetoed", []), seen=decision.get("seen"))
    return stored, stored is mine
