"""(gene, context) pairs at the lab boundary: the `gene` and `context` columns of order sheets, results files and
the HTTP lab's JSON (issue 12).

A campaign across contexts orders pairs labelled `GENE@@context` (`perturbloop.contexts.pair_label`). A lab may
name a result by that label or by its gene and its context; both come back as the ordered label. Gene symbols are
matched as every lab label is (`lab_label`: case, pair order and `;` do not matter); a context is matched exactly
(it is a name the campaign chose, e.g. `Stim48hr`), and must be one of the contexts of the order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from perturbloop.contexts import PAIR_SEP, pair_label, split_label
from perturbloop.errors import LabSubmissionError
from perturbloop.perturbation import lab_label


def lab_key(raw: object) -> str:
    """The label a lab's `raw` label stands for, as the order is matched: `lab_label` for a perturbation;
    `lab_label(GENE)@@context` for a pair (its context kept as written); "" for a pair label missing a part."""
    text = "" if raw is None else str(raw).strip()
    gene, sep, context = text.rpartition(PAIR_SEP)
    if not sep:
        return lab_label(text)
    gene, context = lab_label(gene), context.strip()
    return pair_label(gene, context) if gene and context else ""


def context_batch(batch: Sequence[str]) -> bool:
    """Whether a batch is of (gene, context) pairs (all its labels `GENE@@context`); False for perturbations.
    A LabSubmissionError names the labels of a batch that mixes the two, or a malformed pair label."""
    pairs = [label for label in batch if PAIR_SEP in label]
    if not pairs:
        return False
    bad = [label for label in batch if PAIR_SEP not in label or not lab_key(label)]
    if bad:
        raise LabSubmissionError(f"a batch of (gene, context) pairs `GENE{PAIR_SEP}context` holds other labels: "
                                 + ", ".join(map(repr, bad[:10])))
    return True


def contexts_of(labels: Iterable[str]) -> list[str]:
    """The contexts of a batch's pair labels, in order of first appearance."""
    return list(dict.fromkeys(split_label(label)[1] for label in labels if PAIR_SEP in label))


def result_key(label: str, gene: str, context: str, contexts: Sequence[str] | None) -> tuple[str | None, str | None]:
    """The key (`lab_key`) of one result of a pairs order, named by its `label` (`GENE@@context`), by `gene` and
    `context`, or both (then they must agree); or the problem with it. `contexts`: the order's contexts (None:
    the order is not known, any context is taken)."""
    label, gene, context = label.strip(), gene.strip(), context.strip()
    if label:
        if PAIR_SEP in label:
            g, _, c = label.rpartition(PAIR_SEP)
            g, c = g.strip(), c.strip()
            if not g or not c:
                return None, (f"{label!r} is not a (gene, context) label `GENE{PAIR_SEP}context`"
                              + (" (no context after it)" if g else " (no gene before it)"))
            if context and context != c:
                return None, f"context {context!r} differs from the context {c!r} of its label"
            if gene and lab_label(gene) != lab_label(g):
                return None, f"gene {gene!r} differs from the gene {g!r} of its label"
            gene, context = g, c
        elif gene and lab_label(gene) != lab_label(label):
            return None, f"gene {gene!r} differs from the perturbation {label!r}"
        else:
            gene = label
    if not gene:
        return None, "no gene (give the perturbation label GENE@@context, or the gene and context columns)"
    if not context:
        return None, (f"no context for {gene} (write {gene}{PAIR_SEP}context, or fill the context column"
                      + (f" with one of {', '.join(contexts)})" if contexts else ")"))
    if contexts is not None and context not in contexts:
        return None, f"unknown context {context!r} (the contexts of this order: {', '.join(contexts)})"
    return pair_label(lab_label(gene), context), None
