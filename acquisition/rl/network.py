"""The policy network and its checkpoint (a state dict plus a JSON config; no pickle).

The network scores each candidate independently from its state features (`n x F` -> `n`): an
MLP shared across candidates, so it is permutation-equivariant and works on a pool of any
size. Picking a batch from the scores:

  * training: Plackett-Luce sampling without replacement via Gumbel top-k,
    `picks = topk(s + G, q)`, `G ~ Gumbel(0, 1)`, whose log-probability is
    `log p(picks) = sum_j [s_{p_j} - log sum_{i in A_j} exp(s_i)]`, `A_j` = available
    candidates not among `p_1..p_{j-1}`;
  * deployment: greedy, the top `q` scores.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from acquisition.rl.features import FEATURES
from perturbloop.errors import ConfigError

CHECKPOINT_FORMAT = "perturbloop-rl-policy/1"
HIDDEN = 64


@dataclass
class PolicyConfig:
    """What rebuilds the network (`features`, `hidden`) and how it was trained (`training`)."""

    features: list[str] = field(default_factory=lambda: list(FEATURES))
    hidden: int = HIDDEN
    rounds: int = 5  # campaign length it was trained for (progress = round / rounds)
    training: dict = field(default_factory=dict)


class PolicyNet(nn.Module):
    """`score(x) = MLP(x)`: `F -> hidden -> hidden -> 1`, SiLU, shared across candidates."""

    def __init__(self, n_features: int = len(FEATURES), hidden: int = HIDDEN):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(n_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """`n x F` -> `n` scores."""
        return self.mlp(feats).squeeze(-1)


def gumbel_topk(scores: torch.Tensor, avail: torch.Tensor, q: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """`q` indices drawn without replacement from `softmax(scores)` restricted to `avail` (Plackett-Luce), in draw
    order."""
    u = torch.rand(scores.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12).to(scores.device)
    g = scores.detach().double() - torch.log(-torch.log(u))
    return g.masked_fill(~avail, float("-inf")).topk(q).indices


def plackett_luce_logp(scores: torch.Tensor, avail: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """`q` log-probabilities of each draw of `picks` (in that order) without replacement from
    `softmax(scores[avail])`; their sum is the log-probability of the ordered batch."""
    s = scores.double().masked_fill(~avail, float("-inf"))
    m = s.max().detach()
    e = torch.exp(s - m)  # 0 where unavailable
    ep = e[picks]
    before = torch.cumsum(ep, 0) - ep  # mass of the earlier picks
    return s[picks] - m - torch.log((e.sum() - before).clamp_min(1e-300))


def save_policy(net: PolicyNet, config: PolicyConfig, path: str | Path) -> Path:
    """Write `{"format", "config" (JSON text), "state_dict"}` with `torch.save`; loadable with `weights_only=True`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "config": json.dumps(asdict(config)), "state_dict": state}, tmp)
    tmp.replace(path)
    return path


def load_policy(path: str | Path, device: torch.device | str = "cpu") -> tuple[PolicyNet, PolicyConfig]:
    """Read a checkpoint written by `save_policy` (`torch.load(..., weights_only=True)`: tensors and plain data
    only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"policy checkpoint {str(path)!r} does not exist (train one with `perturbloop policy train`)")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise ConfigError(f"{path}: not a perturbloop RL policy checkpoint ({e})") from None
    fmt = blob.get("format") if isinstance(blob, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not a perturbloop RL policy checkpoint (format {fmt!r})")
    config = PolicyConfig(**json.loads(blob["config"]))
    if list(config.features) != list(FEATURES):
        raise ConfigError(f"{path}: trained on features {config.features}, this version computes {list(FEATURES)}")
    net = PolicyNet(len(config.features), config.hidden)
    net.load_state_dict(blob["state_dict"])
    return net.to(device).eval(), config
