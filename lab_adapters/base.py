"""The LabAdapter protocol: `submit` (idempotent on round_key), `poll` once, `collect` per perturbation.

A job is `submitted` or `running` until results arrive, `partial` while some of its perturbations
have results and others are still out, then `complete` (every perturbation has a result or an
error) or `failed` (the lab gave up on the job; perturbations without a result count as failed).
`collect` may be called on a `partial` job: it returns the results received so far.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from perturbloop.errors import LabResultError

JobStatus = Literal["submitted", "running", "partial", "complete", "failed"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class JobRef:
    """A lab's handle on one submitted batch."""

    adapter: str
    external_id: str
    idempotency_key: str


@dataclass
class LabResult:
    """One perturbation's measured readout (scalar for screens) and replicates.

    Perturb-seq results carry the perturbation's cells (an AnnData) in `cells` and no scalar
    `value` (None) until they are summarised. A response campaign's lab returns the summarised
    response vector in `response` (e.g. pseudobulk LFC over the readout genes) and its magnitude
    in `value`.
    """

    perturbation: str
    value: float | None
    replicates: list[float] = field(default_factory=list)
    cells: Any = None
    response: list[float] | None = None


def response_value(response: Sequence[float]) -> float:
    """The scalar a response vector stands for when the lab gives none: its one element, or its L2 norm."""
    return float(response[0]) if len(response) == 1 else math.sqrt(math.fsum(float(v) ** 2 for v in response))


def problems_error(source: str, problems: Sequence[str], nothing: str) -> LabResultError:
    """One error for every problem of a results file or payload, one a line (the first `MAX_PROBLEMS_SHOWN`)."""
    more = len(problems) - MAX_PROBLEMS_SHOWN
    listed = "\n  ".join(problems[:MAX_PROBLEMS_SHOWN]) + (f"\n  ... and {more} more" if more > 0 else "")
    return LabResultError(f"{source}: {len(problems)} problem(s){nothing}:\n  {listed}")


@dataclass
class LabError:
    """One perturbation that failed in the lab; it is recorded, not trained on."""

    perturbation: str
    reason: str


@runtime_checkable
class LabAdapter(Protocol):
    name: str

    def submit(self, round_key: str, perturbations: Sequence[str]) -> JobRef:
        """Submit a batch. Re-submitting the same `round_key` returns the same job, never a new one."""
        ...

    def poll(self, job: JobRef) -> JobStatus:
        """One status check; never waits."""
        ...

    def collect(self, job: JobRef) -> dict[str, LabResult | LabError]:
        """Results received so far (all of them once the job is complete), per perturbation."""
        ...
