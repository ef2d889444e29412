"""Gene features: GO embedding, prior-screen features, user embeddings, the candidate pool."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from perturbloop.data import Screen, load_screen
from perturbloop.errors import PerturbloopError
from perturbloop.features import build_gene_pool, go_embedding, load_embeddings, screen_features


def test_small_pool_shape_and_dtype(small_pool, small_pool_genes):
    assert len(small_pool) == 600
    assert small_pool.labels == small_pool_genes
    assert small_pool.X.shape == (600, 65)
    assert small_pool.X.dtype == torch.float64
    assert small_pool.X.device.type == "cpu"
    assert small_pool.feature_names == [f"go_svd{i}" for i in range(64)] + ["go_missing"]
    assert torch.isfinite(small_pool.X).all()


def test_small_pool_columns_standardised(small_pool):
    X = small_pool.X
    assert torch.allclose(X.mean(0), torch.zeros(X.shape[1], dtype=torch.float64), atol=1e-9)
    sd = X.std(0, unbiased=False)
    assert torch.allclose(sd, torch.ones_like(sd), atol=1e-9)


def test_genes_without_go_share_one_row(small_pool):
    miss = small_pool.X[:, -1] > 0
    n_miss = int(miss.sum())
    assert 0 < n_miss < 60  # a few real genes (readthroughs, ORFs) have no GO annotation
    rows = small_pool.X[miss, :-1]
    assert torch.allclose(rows, rows[0].expand_as(rows))  # zero embedding before standardising
    annotated = small_pool.X[~miss]
    assert len(torch.unique(annotated, dim=0)) > 0.95 * len(annotated)  # annotated genes are told apart


def test_go_embedding_cached(small_pool_genes, data_dir, perturbloop_cache_dir, small_pool):
    cached = list((perturbloop_cache_dir / "features").glob("go_*.npy"))
    assert cached, "GO embedding is cached under PERTURBLOOP_CACHE_DIR"
    emb, names = go_embedding(small_pool_genes, data_dir=data_dir)
    assert emb.shape == (600, 65) and names[-1] == "go_missing"
    assert set(np.unique(emb[:, -1])) == {0.0, 1.0}


def test_go_embedding_puts_ribosomal_genes_together(il2_screen, data_dir):
    """Cytosolic ribosomal proteins share many GO terms: they sit closer than random genes."""
    rib = sorted(g for g in il2_screen.genes if re.fullmatch(r"RP[LS]\d+A?", g))
    assert len(rib) > 50
    rng = np.random.default_rng(0)
    rib = list(rng.choice(rib, 30, replace=False))
    others = sorted(g for g in il2_screen.genes if not g.startswith(("RPL", "RPS", "MRP")))
    rand = list(rng.choice(others, 300, replace=False))
    pool = build_gene_pool(rib + rand, features=["go"], data_dir=data_dir)
    X = pool.X[:, :-1]

    def mean_pairwise(A: torch.Tensor) -> float:
        d = torch.cdist(A, A)
        return float(d.sum() / (len(A) * (len(A) - 1)))

    d_rib, d_rand = mean_pairwise(X[:30]), mean_pairwise(X[30:])
    assert d_rib < 0.85 * d_rand, (d_rib, d_rand)

    raw, _ = go_embedding(rib + rand, data_dir=data_dir)
    E = torch.nn.functional.normalize(torch.from_numpy(raw[:, :-1]), dim=1)

    def mean_cos(A: torch.Tensor) -> float:
        c = A @ A.T
        return float((c.sum() - c.diag().sum()) / (len(A) * (len(A) - 1)))

    assert mean_cos(E[:30]) > mean_cos(E[30:]) + 0.2


def test_screen_features_with_prior_screen(data_dir):
    prior = load_screen("zhuang2019_nk", data_dir)
    genes = ["PITPNB", "NOT_MEASURED_GENE", "SCAMP2"]
    m, names = screen_features(genes, [prior])
    assert names == ["zhuang2019_nk_z", "zhuang2019_nk_absz", "zhuang2019_nk_missing"]
    assert m.shape == (3, 3)
    z = (prior.scores - prior.scores.mean()) / prior.scores.std()
    for row, g in ((0, "PITPNB"), (2, "SCAMP2")):
        assert m[row, 0] == pytest.approx(z[g])
        assert m[row, 1] == pytest.approx(abs(z[g]))
        assert m[row, 2] == 0.0
    assert m[1].tolist() == [0.0, 0.0, 1.0]


def test_screen_features_without_screens():
    m, names = screen_features(["A", "B"], [])
    assert m.shape == (2, 0) and names == []


def test_build_pool_with_screens_and_essential(data_dir):
    prior = Screen("toy", pd.Series({"VAV1": 1.0, "CD3G": -1.0, "RPL3": 3.0, "LAT": 0.0}))
    genes = ["VAV1", "CD3G", "RPL3", "POLR2A", "ZAP70"]
    pool = build_gene_pool(genes, features=["screens", "essential"], prior_screens=[prior], data_dir=data_dir)
    assert pool.feature_names == ["toy_z", "toy_absz", "toy_missing", "essential"]
    assert pool.X.shape == (5, 4) and pool.X.dtype == torch.float64
    ess = pool.X[:, 3]
    assert ess[2] > 0 and ess[3] > 0  # RPL3 and POLR2A are core-essential (CEGv2)
    assert ess[0] < 0 and ess[1] < 0 and ess[4] < 0
    miss = pool.X[:, 2]
    assert miss[3] > 0 and miss[4] > 0 and miss[0] < 0


def test_unknown_feature_source(data_dir):
    with pytest.raises(PerturbloopError, match=r"unknown feature source 'bogus'"):
        build_gene_pool(["VAV1", "CD3G"], features=["bogus"], data_dir=data_dir)


def test_embedding_feature_needs_file(data_dir):
    with pytest.raises(PerturbloopError, match="embeddings file"):
        build_gene_pool(["VAV1"], features=["embedding"], data_dir=data_dir)


def test_load_embeddings_csv(tmp_path):
    path = tmp_path / "emb.csv"
    path.write_text("gene,a,b\nvav1,1.0,2.0\nCD3G,3.0,4.0\nCD3G,5.0,6.0\nOTHER,9,9\n")
    m, names = load_embeddings(path, ["VAV1", "CD3G", "MISSING1"])
    assert names == ["emb0", "emb1"]
    np.testing.assert_allclose(m, [[1.0, 2.0], [4.0, 5.0], [0.0, 0.0]])


def test_load_embeddings_csv_non_numeric(tmp_path):
    path = tmp_path / "emb.csv"
    path.write_text("gene,a,b\nVAV1,1.0,x\n")
    with pytest.raises(PerturbloopError, match="numeric"):
        load_embeddings(path, ["VAV1"])


def test_load_embeddings_npy(tmp_path):
    np.save(tmp_path / "e.npy", np.array([[1.0, 0.0, 2.0], [0.5, 0.5, 0.5]]))
    (tmp_path / "e.genes.txt").write_text("vav1\nLAT\n")
    m, names = load_embeddings(tmp_path / "e.npy", ["LAT", "VAV1", "ZAP70"])
    assert len(names) == 3
    np.testing.assert_allclose(m, [[0.5, 0.5, 0.5], [1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    np.save(tmp_path / "lonely.npy", np.zeros((2, 2)))
    with pytest.raises(PerturbloopError, match="lonely.genes.txt"):
        load_embeddings(tmp_path / "lonely.npy", ["LAT"])


def test_build_pool_from_embedding_file(tmp_path, data_dir):
    path = tmp_path / "emb.csv"
    path.write_text("gene,a,b\nVAV1,1.0,10.0\nCD3G,3.0,10.0\nLAT,5.0,10.0\n")
    pool = build_gene_pool(["VAV1", "CD3G", "LAT"], features=["embedding"], embeddings=str(path), data_dir=data_dir)
    assert pool.labels == ["VAV1", "CD3G", "LAT"]
    # column a standardised; constant column b stays finite (centred to 0)
    np.testing.assert_allclose(pool.X[:, 0].numpy(), [-1.224744871, 0.0, 1.224744871], atol=1e-8)
    np.testing.assert_allclose(pool.X[:, 1].numpy(), [0.0, 0.0, 0.0])
