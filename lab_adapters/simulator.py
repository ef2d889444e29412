"""SimulatorLab: the LabAdapter over any simulated world (screen replay, Perturb-seq replay, pairs)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from lab_adapters.base import JobRef, JobStatus, LabError, LabResult, response_value
from simulators.world import World


class SimulatorLab:
    """Runs batches in any simulated world (simulators.world.World: a screen replay, a Perturb-seq replay, the
    synthetic GRN, a pair screen); a job is complete after `turnaround_polls` polls (default: at once).

    Idempotent on `round_key`: the job id is a hash of the key, and a key resubmitted with a different batch is
    refused. A job is measured once: collecting it again returns the same results, never new cells. A result carries
    the world's readout as `value` (a vector's L2 norm, or the one readout) with its replicates, and a
    response of several readouts in `response`.
    """

    name = "simulator"

    def __init__(self, world: World, turnaround_polls: int = 0):
        self._jobs: dict[str, tuple[str, ...]] = {}  # job id (a hash of the round key) -> batch
        self.submissions = 0  # how many distinct batches were actually run (for tests)
        self.world = world
        self.turnaround_polls = turnaround_polls
        self._polls: dict[str, int] = {}
        self._results: dict[str, dict[str, LabResult | LabError]] = {}

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

    def poll(self, job: JobRef) -> JobStatus:
        self._batch(job)
        self._polls[job.external_id] = self._polls.get(job.external_id, 0) + 1
        return "complete" if self._polls[job.external_id] > self.turnaround_polls else "running"

    def collect(self, job: JobRef) -> dict[str, LabResult | LabError]:
        if job.external_id not in self._results:
            out: dict[str, LabResult | LabError] = {}
            for label, m in self.world.measure(list(self._batch(job))).items():
                y = None if m.response is None else np.asarray(m.response, dtype=np.float64).ravel()
                if y is None or not np.all(np.isfinite(y)):
                    out[label] = LabError(label, m.error or "non-finite response")
                else:
                    out[label] = LabResult(label, response_value(y.tolist()), list(m.replicates),
                                           response=y.tolist() if y.size > 1 else None)
            self._results[job.external_id] = out
        return dict(self._results[job.external_id])
