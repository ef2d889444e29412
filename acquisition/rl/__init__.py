"""A learned acquisition policy: a torch network over per-candidate state features, trained by
REINFORCE on simulated campaigns in training worlds (leave-one-screen-out real screens and
synthetic screens).

    features.py  state features (the same in training and in campaigns)
    network.py   the policy network, Plackett-Luce batch sampling, checkpoint I/O
    env.py       the cheap training environment (subsampled pools, closed-form GP posterior)
    worlds.py    training worlds from registry screens and synthetic screens
    train.py     the REINFORCE loop
    policy.py    `RLPolicy` (acquisition.kind = "rl") and the permuted-feedback control
"""

from acquisition.rl.network import PolicyConfig, PolicyNet, load_policy, save_policy
from acquisition.rl.policy import RLPermutedPolicy, RLPolicy

__all__ = ["PolicyConfig", "PolicyNet", "RLPermutedPolicy", "RLPolicy", "load_policy", "save_policy"]
