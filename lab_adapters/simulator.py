"""SimulatorLab: the LabAdapter over a simulated world (screen replay, ...)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from lab_adapters.base import JobRef, JobStatus, LabError, LabResult
from simulators.screen_replay import ScreenReplay


class SimulatedJobs:
    """In-memory jobs of a simulated lab, idempotent on `round_key`: the job id is a hash of the key,
    and a key resubmitted with a different batch is refused."""

    name = "simulator"

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[str, ...]] = {}
        self.submissions = 0  # how many distinct batches were actually run (for tests)

    def submit(self, round_key: str, perturbations: Sequence[str]) -> JobRef:
        batch = tuple(perturbations)
        job_id = "sim-" + hashlib.sha256(round_key.encode()).hexdigest()[:16]
        if job_id in self._jobs:
            if self._jobs[job_id] != batch:
                raise ValueError(f"round {round_key!r} was already submitted with a different batch")
        else:
            self._jobs[job_id] = batch
            self.submissions += 1
        return JobRef(self.name, job_id, round_key)

    def _batch(self, job: JobRef) -> tuple[str, ...]:
        if job.external_id not in self._jobs:
            raise KeyError(f"unknown job {job.external_id} (was it submitted to this lab?)")
        return self._jobs[job.external_id]


class SimulatorLab(SimulatedJobs):
    """Runs batches in a screen simulator; a job is complete after `turnaround_polls` polls (default: at once)."""

    def __init__(self, world: ScreenReplay, turnaround_polls: int = 0):
        super().__init__()
        self.world = world
        self.turnaround_polls = turnaround_polls
        self._polls: dict[str, int] = {}

    def poll(self, job: JobRef) -> JobStatus:
        self._batch(job)
        self._polls[job.external_id] = self._polls.get(job.external_id, 0) + 1
        return "complete" if self._polls[job.external_id] > self.turnaround_polls else "running"

    def collect(self, job: JobRef) -> dict[str, LabResult | LabError]:
        out: dict[str, LabResult | LabError] = {}
        for r in self.world.run(self._batch(job)):
            out[r.perturbation] = LabError(r.perturbation, r.error) if r.error or r.value is None else LabResult(r.perturbation, r.value, r.replicates)
        return out
