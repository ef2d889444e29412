"""The lab boundary: adapters that submit batches, poll and collect results.

`make_lab` builds the adapter a campaign config names (`lab.kind`): `simulator` (SimulatorLab),
`filedrop` (FileDropLab: order sheets out, results files in) or `http` (HttpLab: a lab's REST API).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lab_adapters.base import JobRef, LabAdapter, LabError, LabResult
from lab_adapters.filedrop import FileDropLab
from lab_adapters.simulator import SimulatorLab
from perturbloop.errors import ConfigError

if TYPE_CHECKING:
    from perturbloop.config import LabConfig
    from simulators.world import World

__all__ = ["FileDropLab", "JobRef", "LabAdapter", "LabError", "LabResult", "SimulatorLab", "make_lab"]


def make_lab(config: LabConfig, world: World | None = None) -> LabAdapter:
    """The lab adapter `config.kind` names; `world` is what the simulator lab replays.

    The HTTP lab's token is read from the environment variable `config.token_env`, never from the config.
    """
    if config.kind == "simulator":
        if world is None:
            raise ConfigError("lab.kind = 'simulator' needs a world to run (data.screen, or a [world])")
        return SimulatorLab(world)
    if config.kind == "filedrop":
        return FileDropLab(config.outbox, config.inbox)  # type: ignore[arg-type]
    if config.kind == "http":
        from lab_adapters.http import HttpLab

        token = os.environ.get(config.token_env) if config.token_env else None
        if config.token_env and not token:
            raise ConfigError(f"lab.token_env: environment variable {config.token_env} is not set "
                              "(it holds the lab's token)")
        return HttpLab(config.url, token, timeout=config.timeout, retries=config.retries,  # type: ignore[arg-type]
                       token_hint=config.token_env or "")
    raise ConfigError(f"lab.kind {config.kind!r} is not available")
