"""REINFORCE with a group baseline over simulated campaigns in training worlds.

Each iteration draws a world (round robin over a shuffled list) and a pool subsample, then runs
`group` episodes on that same subsample with independent Gumbel noise. A round's reward is a
sum over its picks (hit or not), so each draw `j` of round `t` of episode `k` is credited with
its own reward plus the return of the later rounds, each minus a baseline:

    `A_{k,t,j} = (r_{k,t,j} - rbar_t) + (G_{k,t+1} - mean_{k' != k} G_{k',t+1})`

`rbar_t` = the group's mean per-pick reward in round `t`, `G_{k,t+1}` = reward of rounds
`t+1..T` (a leave-one-out baseline: same world, same pool). Advantages are divided by their
sd over the group. The policy gradient of the Plackett-Luce batch is

    `loss = -mean_{k,t,j} A_{k,t,j} log p_theta(a_{k,t,j} | state_{k,t}, a_{k,t,<j})`

(`network.plackett_luce_logp`); a pick's own hit does not depend on the later draws of its
round, so crediting it alone only drops the (tiny) effect of one pick on which genes remain for
the rest of the batch. Adam, gradient norm clipped to `GRAD_CLIP`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch

from acquisition.rl.env import POOL_SIZE, TrainWorld, run_episode, subsample, training_batch
from acquisition.rl.features import FEATURES, reference_score
from acquisition.rl.network import HIDDEN, PolicyConfig, PolicyNet

ITERATIONS = 200
GROUP = 8
LR = 2e-3
WARM_START = "greedy"  # imitate the project's recommended policy before the policy-gradient phase
BC_ITERATIONS = 100
GRAD_CLIP = 1.0


@dataclass
class TrainResult:
    net: PolicyNet
    config: PolicyConfig
    history: list[dict] = field(default_factory=list)  # per iteration: world, mean return, loss
    seconds: float = 0.0


def train_policy(worlds: Sequence[TrainWorld], *, rounds: int = 5, batch: int = 128, pool_size: int = POOL_SIZE,
                 iterations: int = ITERATIONS, group: int = GROUP, lr: float = LR, hidden: int = HIDDEN, seed: int = 0,
                 warm_start: str | None = WARM_START, bc_iterations: int = BC_ITERATIONS,
                 device: torch.device | str = "cpu", on_iteration: Callable[[int, dict], None] | None = None,
                 meta: dict | None = None) -> TrainResult:
    """Train a policy network on `worlds` (see module docstring); `batch` is the deployed batch
    (scaled to each episode's pool, `env.training_batch`). With `warm_start` (a
    `features.reference_score` kind) the network first imitates that policy for `bc_iterations`
    episodes (maximising the Plackett-Luce likelihood of its ranked batches); `on_iteration`
    is called after every step of both phases (`row["phase"]` is "imitation" or "reinforce")."""
    if not worlds:
        raise ValueError("train_policy needs at least one training world")
    if group < 2:
        raise ValueError(f"group must be >= 2 (the baseline is the other episodes' mean), got {group}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = PolicyNet(len(FEATURES), hidden).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    order: list[int] = []
    history: list[dict] = []
    t0 = time.perf_counter()

    def next_world() -> tuple[TrainWorld, torch.Tensor, int]:
        if not order:
            order.extend(torch.randperm(len(worlds), generator=gen).tolist())
        world = worlds[order.pop()]
        return world, subsample(len(world), pool_size, gen), training_batch(batch, pool_size, len(world))

    def step(loss: torch.Tensor, row: dict) -> None:
        """One clipped Adam step on `loss`; `row` (with the loss) goes to the history and `on_iteration`."""
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP)
        opt.step()
        history.append({**row, "loss": float(loss.detach())})
        if on_iteration is not None:
            on_iteration(row["iteration"], history[-1])

    if warm_start:
        teacher = partial(reference_score, warm_start)
        for it in range(bc_iterations):
            world, idx, q = next_world()
            ep = run_episode(world, net, idx, rounds=rounds, batch=q, device=device, scorer=teacher, imitate=True)
            step(-torch.cat(ep.logps).mean(),
                 {"phase": "imitation", "iteration": it, "world": world.name, "return": sum(ep.rewards)})
    for it in range(iterations):
        world, idx, q = next_world()
        eps = [run_episode(world, net, idx, rounds=rounds, batch=q, generator=gen, device=device) for _ in range(group)]
        R = torch.tensor([e.rewards for e in eps], dtype=torch.float64)  # K x T
        G = R.flip(1).cumsum(1).flip(1)  # reward-to-go
        future = torch.cat([G[:, 1:], torch.zeros(group, 1, dtype=G.dtype)], 1)  # K x T: return of the later rounds
        future = future - (future.sum(0, keepdim=True) - future) / (group - 1)  # minus the other episodes' mean
        r = torch.stack([torch.stack(e.pick_rewards) for e in eps])  # K x T x q
        own = r - r.mean(dim=(0, 2), keepdim=True)  # a pick's own hit minus the round's mean hit rate
        adv = own + future[:, :, None]
        adv = adv / adv.std().clamp_min(1e-12)  # all zero (no hit anywhere in the group): no update
        logp = torch.stack([torch.stack(e.logps) for e in eps])  # K x T x q
        step(-(adv.to(logp) * logp).mean(),
             {"phase": "reinforce", "iteration": it, "world": world.name, "return": float(G[:, 0].mean())})
    net.eval()
    seconds = time.perf_counter() - t0
    config = PolicyConfig(list(FEATURES), hidden, rounds, {
        "algorithm": "REINFORCE, leave-one-out group baseline, Plackett-Luce (Gumbel top-k) batches",
        "worlds": [w.name for w in worlds], "warm_start": warm_start,
        "bc_iterations": bc_iterations if warm_start else 0, "iterations": iterations, "group": group,
        "episodes": iterations * group, "lr": lr, "seed": seed, "pool_size": pool_size, "batch": batch,
        "rounds": rounds, "seconds": round(seconds, 1), "device": str(device), **(meta or {}),
    })
    return TrainResult(net.cpu(), config, history, seconds)


@torch.no_grad()
def evaluate(worlds: Sequence[TrainWorld], net: PolicyNet | None = None, *, rounds: int = 5, batch: int = 128,
             pool_size: int = POOL_SIZE, episodes: int = 4, seed: int = 1234,
             scorer: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """Mean greedy hit ratio per world over `episodes` fixed subsamples (the same for every policy given the seed)."""
    out = {}
    for w in worlds:
        gen = torch.Generator().manual_seed(seed)
        q = training_batch(batch, pool_size, len(w))
        vals = [sum(run_episode(w, net, subsample(len(w), pool_size, gen), rounds=rounds, batch=q,
                                scorer=scorer).rewards) for _ in range(episodes)]
        out[w.name] = sum(vals) / len(vals)
    return out
