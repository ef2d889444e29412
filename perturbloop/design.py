"""Building a response campaign's design space from its world: gene features, the space, the split.

`build_space(world, config)` turns the candidates a world offers into a `SingleSpace` or a
`PairSpace` (perturbloop.design_space) with standardised gene features (`design.features`);
`split_candidates` draws the held-out test perturbations and the initial random design of a seed.
The world is anything with `genes`, `candidates`, `synthetic` and `control_expression()`
(simulators.response_worlds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from perturbloop.device import default_device, keep_torch_threads
from perturbloop.errors import ConfigError
from perturbloop.features import standardised
from perturbloop.design_space import DesignSpace, PairSpace, SingleSpace
from perturbloop.config import RESPONSE_KNOWLEDGE, CampaignConfig

if TYPE_CHECKING:
    from simulators.response_worlds import ResponseWorld


def expression_pca_features(genes: Sequence[str], readout: Sequence[str], ctrl_expr: np.ndarray,
                            k: int) -> tuple[np.ndarray, list[str]]:
    """Each perturbed gene's loadings on the top-`k` PCs of control-cell expression (genes x PCs, scaled
    by the PC's sd), plus a `expr_missing` flag for genes not measured (zeros)."""
    X = ctrl_expr - ctrl_expr.mean(0)
    _, s, Vt = np.linalg.svd(X, full_matrices=False)
    k = min(k, Vt.shape[0])
    load = (Vt[:k].T * (s[:k] / np.sqrt(max(X.shape[0] - 1, 1))))  # G x k
    pos = {g: i for i, g in enumerate(readout)}
    rows = np.array([pos.get(g, -1) for g in genes], dtype=int)  # -1: not measured
    out = np.zeros((len(genes), k + 1))
    out[rows >= 0, :k] = load[rows[rows >= 0]]
    out[rows < 0, k] = 1.0
    return out, [f"expr_pc{j}" for j in range(k)] + ["expr_missing"]


def gene_feature_matrix(genes: Sequence[str], world: ResponseWorld, config: CampaignConfig,
                        data_dir=None) -> tuple[torch.Tensor, list[str]]:
    """`n x d` standardised gene features of the perturbable genes (design.features)."""
    blocks, names = [], []
    for f in config.design.features:
        if world.synthetic and (f == "go" or f in RESPONSE_KNOWLEDGE):
            raise ConfigError(f"design.features: {f!r} needs real gene symbols; a synthetic world has none "
                              "(use expression_pca)")
        with keep_torch_threads():  # scikit-learn's SVD (GO embedding) may reset OpenMP threads too
            if f == "go":
                from perturbloop.features import go_embedding

                emb, n = go_embedding(list(dict.fromkeys([*genes, *world.genes])), data_dir=data_dir,
                                      dims=config.design.go_dims)
                m = emb[: len(genes)]
            elif f == "expression_pca":
                ctrl = world.control_expression()
                if ctrl is None:
                    raise ConfigError("design.features: 'expression_pca' needs control cells; this world has none")
                m, n = expression_pca_features(genes, world.genes, ctrl, config.design.expression_pcs)
            elif f in RESPONSE_KNOWLEDGE:
                from perturbloop.response_knowledge import response_knowledge_features

                m, n = response_knowledge_features(genes, f, data_dir=data_dir)
            else:  # "none"
                continue
        blocks.append(m)
        names += n
    return standardised(blocks, len(genes)), names


def build_space(world: ResponseWorld, config: CampaignConfig, data_dir=None) -> DesignSpace:
    """The design space of a response campaign over the world's candidates (see perturbloop.design_space)."""
    cands = list(world.candidates)
    if config.design.genes:
        keep = {g.upper() for g in config.design.genes}
        cands = [c for c in cands if set(c.split("+")) <= keep]
    if config.design.space == "genes":
        singles = [c for c in cands if "+" not in c]
        if not singles:
            raise ConfigError("design.space = 'genes' but the world offers no single-gene perturbations")
        X, names = gene_feature_matrix(singles, world, config, data_dir)
        return SingleSpace(singles, X, names)
    pairs = [c for c in cands if c.count("+") == 1]
    if not pairs:
        raise ConfigError("design.space = 'pairs' but the world offers no gene pairs")
    if config.design.max_pairs and len(pairs) > config.design.max_pairs:
        rng = np.random.default_rng([config.seed, 7])
        pairs = sorted(rng.choice(pairs, config.design.max_pairs, replace=False).tolist())
    genes = sorted({g for p in pairs for g in p.split("+")})
    X, _ = gene_feature_matrix(genes, world, config, data_dir)
    return PairSpace(genes, X, pairs, pooling=config.design.pooling, prior_rank=config.design.prior_rank,
                     use_offset=getattr(world, "offset_prior", True), device=default_device())


@dataclass
class Split:
    test: list[str]
    initial: list[str]


def split_candidates(space: DesignSpace, config: CampaignConfig, seed: int, *, held_out: bool = True) -> Split:
    """Held-out test perturbations (none without `held_out`: a real lab's campaign has no truth to score
    against) and the initial random design of one seed (shared by all policies)."""
    n = len(space)
    rng = np.random.default_rng([config.seed, seed, 11])
    n_test = max(1, int(round(config.evaluation.test_fraction * n))) if held_out else 0
    if config.evaluation.max_test:
        n_test = min(n_test, config.evaluation.max_test)
    if n_test + config.initial >= n:
        raise ConfigError(f"initial ({config.initial}) + test ({n_test}) leave nothing to pick among {n} candidates")
    perm = rng.permutation(n)
    test, initial = np.sort(perm[:n_test]), np.sort(perm[n_test:n_test + config.initial])
    return Split(space.labels_at(test), space.labels_at(initial))


def prepare_singles(world: ResponseWorld, space: DesignSpace) -> dict[str, np.ndarray]:
    """Pair spaces: measure the singles (round 0) and give the space its additive prior."""
    if space.kind != "pairs":
        return {}
    singles = world.singles()
    S = np.full((len(space.genes), len(world.genes)), np.nan)
    pos = {g: i for i, g in enumerate(space.genes)}
    for lab, v in singles.items():
        if lab in pos:
            S[pos[lab]] = v
    space.set_singles(torch.from_numpy(S))
    return singles
