"""In-memory simulated campaigns for evaluation sweeps (no store, no checkpoints).

The same surrogates and policies as the agent loop, on the BioDiscoveryAgent protocol:
each round fits the surrogate on everything observed so far (round 1: nothing observed, so
the policy decides from prior features alone), picks a batch, and the world reveals those
genes' scores. Hit ratio after round `t` = distinct hits picked in rounds 1..t / all hits.
The world's scores reach the policy only through `world.run` (observed values).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from acquisition.base import AcquisitionPolicy
from perturbloop.perturbation import CandidatePool
from simulators.screen_replay import ScreenReplay
from surrogates.base import Surrogate


@dataclass
class SimulatedRun:
    policy: str
    seed: int
    per_round: list[float] = field(default_factory=list)  # cumulative hit ratio after each round
    round_seconds: list[float] = field(default_factory=list)
    picks: list[list[str]] = field(default_factory=list)

    @property
    def hit_ratio(self) -> float:
        return self.per_round[-1] if self.per_round else 0.0


def simulate_campaign(pool: CandidatePool, world: ScreenReplay, policy: AcquisitionPolicy,
                      make_surrogate: Callable[[dict | None], Surrogate] | None, *, rounds: int, batch_size: int,
                      seed: int = 0, objective: Callable[[float], float] = abs, hit_calls: bool = False) -> SimulatedRun:
    """`objective` maps a readout to the modelled value; with `hit_calls` the model sees the lab's
    hit call instead (1.0 for a measured hit, else 0.0), as a screen analysis reports it."""
    run = SimulatedRun(policy.name, seed)
    hits = set(world.hits) & set(pool.labels)
    observed: dict[str, float] = {}
    params: dict | None = None
    found: set[str] = set()
    for _ in range(rounds):
        t0 = time.perf_counter()
        surrogate = None
        # a constant target (no hit called yet) ranks nothing: the policy falls back on the priors
        if make_surrogate is not None and len(observed) >= 2 and len(set(observed.values())) > 1:
            surrogate = make_surrogate(params)
            idx = pool.indices(list(observed))
            surrogate.fit(pool.X[idx], torch.tensor(list(observed.values()), dtype=torch.float64))
            params = getattr(surrogate, "params", None)
        proposal = policy.select(surrogate, pool, observed, batch_size, ())
        run.round_seconds.append(time.perf_counter() - t0)
        for reading in world.run(proposal.labels):
            if reading.value is not None:
                observed[reading.perturbation] = (float(reading.perturbation in world.hits) if hit_calls
                                                  else objective(reading.value))
        found |= hits & set(proposal.labels)
        run.per_round.append(len(found) / len(hits) if hits else 0.0)
        run.picks.append(proposal.labels)
    return run
