"""The LabAdapter protocol: `submit` (idempotent on round_key), `poll` once, `collect` per perturbation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

JobStatus = Literal["submitted", "running", "complete", "failed"]


@dataclass(frozen=True)
class JobRef:
    """A lab's handle on one submitted batch."""

    adapter: str
    external_id: str
    idempotency_key: str


@dataclass
class LabResult:
    """One perturbation's measured readout (scalar for screens) and replicates."""

    perturbation: str
    value: float
    replicates: list[float] = field(default_factory=list)


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
        """Results of a complete job, per perturbation."""
        ...
