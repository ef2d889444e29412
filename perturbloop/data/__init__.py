"""Named datasets, their loaders and the data directory they are read from.

The screen loaders (pandas) are imported on first use, so that importing the registry (e.g. for the gene
index or a cache path) does not import pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from perturbloop.data.registry import REGISTRY, DatasetSpec, data_dirs, fetch, resolve

if TYPE_CHECKING:
    from perturbloop.data.screens import Screen, load_screen, read_screen_file

_LAZY = {"Screen", "load_screen", "read_screen_file"}  # from perturbloop.data.screens


def __getattr__(name: str):
    if name in _LAZY:
        from perturbloop.data import screens

        return getattr(screens, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["REGISTRY", "DatasetSpec", "Screen", "data_dirs", "fetch", "load_screen", "read_screen_file", "resolve"]
