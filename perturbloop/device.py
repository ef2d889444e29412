"""Device selection: CUDA when available (and not disabled), else CPU."""

from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    """`cuda` if a GPU is visible and PERTURBLOOP_DEVICE is not `cpu`; else `cpu`."""
    want = os.environ.get("PERTURBLOOP_DEVICE", "auto").lower()
    if want == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")
