"""Labels of (gene, context) pairs, `GENE@@context`: no gene symbol contains `@@` (`HOXA@` does contain `@`).

Kept free of numpy and pandas so that the store's readers (`status`, `review`, the approval check) can tell a
context label without importing `perturbloop.contexts`.
"""

from __future__ import annotations

PAIR_SEP = "@@"


def pair_label(gene: str, context: str) -> str:
    return f"{gene}{PAIR_SEP}{context}"


def split_label(label: str) -> tuple[str, str]:
    """`GENE@@context` -> (gene, context); a ValueError naming the label otherwise."""
    gene, sep, context = label.rpartition(PAIR_SEP)
    if not sep or not gene or not context:
        raise ValueError(f"{label!r} is not a (gene, context) label `GENE{PAIR_SEP}context`")
    return gene, context
