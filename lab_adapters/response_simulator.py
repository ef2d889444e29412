"""ResponseSimulatorLab: the LabAdapter over a simulated response world (Perturb-seq replay of
held-out cells, the synthetic GRN, the Norman 2019 pair screen).

The world answers `measure(labels) -> {label: response vector | None}` (None: the run failed);
each result carries the vector in `LabResult.response` and its magnitude in `value`
(`||y||_2` for a transcriptome response, the readout itself for a one-number response).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from lab_adapters.base import JobRef, JobStatus, LabError, LabResult, response_value
from lab_adapters.simulator import SimulatedJobs


class MeasuringWorld(Protocol):
    genes: list[str]

    def measure(self, labels: Sequence[str]) -> Mapping[str, np.ndarray | None]: ...


class ResponseSimulatorLab(SimulatedJobs):
    """Runs batches in a response world; complete at once. Idempotent on `round_key` (`SimulatedJobs`),
    and a job is measured once: collecting it again returns the same results, never new cells."""

    def __init__(self, world: MeasuringWorld):
        super().__init__()
        self.world = world
        self._results: dict[str, dict[str, LabResult | LabError]] = {}

    def poll(self, job: JobRef) -> JobStatus:
        self._batch(job)
        return "complete"

    def collect(self, job: JobRef) -> dict[str, LabResult | LabError]:
        if job.external_id not in self._results:
            batch = self._batch(job)
            out: dict[str, LabResult | LabError] = {}
            for lab, y in self.world.measure(list(batch)).items():
                if y is None or not np.all(np.isfinite(y)):
                    out[lab] = LabError(lab, "run failed (no usable cells)" if y is None else "non-finite response")
                    continue
                v = np.asarray(y, dtype=np.float64).ravel()
                value = response_value(v.tolist())
                out[lab] = LabResult(lab, value, [], response=v.tolist())
            self._results[job.external_id] = out
        return dict(self._results[job.external_id])
