"""The lab boundary: adapters that submit batches, poll and collect results."""

from lab_adapters.base import JobRef, LabAdapter, LabError, LabResult
from lab_adapters.simulator import SimulatorLab

__all__ = ["JobRef", "LabAdapter", "LabError", "LabResult", "SimulatorLab"]
