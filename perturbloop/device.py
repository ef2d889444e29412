"""Device selection: CUDA when available (and not disabled), else CPU."""

from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    """`cuda` if a GPU is visible and PERTURBLOOP_DEVICE is not `cpu`; else `cpu`."""
    cpu = os.environ.get("PERTURBLOOP_DEVICE", "auto").lower() == "cpu"
    return torch.device("cuda" if not cpu and torch.cuda.is_available() else "cpu")


class keep_torch_threads:
    """scanpy's preprocessing (numba, OpenMP) resets the calling thread's OpenMP thread count, which is
    torch's too: restore it after every summarisation, or the surrogate fits that follow run with
    threads the caller did not ask for (on 2 shared cores: several times slower)."""

    def __enter__(self) -> None:
        self.n = torch.get_num_threads()

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.n)
