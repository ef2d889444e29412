"""Named datasets, their loaders and the data directory they are read from."""

from perturbloop.data.registry import REGISTRY, DatasetSpec, data_dirs, fetch, resolve
from perturbloop.data.screens import Screen, load_screen, read_screen_file

__all__ = ["REGISTRY", "DatasetSpec", "Screen", "data_dirs", "fetch", "load_screen", "read_screen_file", "resolve"]
