"""Gene knowledge for response campaigns: the GWT (CD4 T-cell / K562) embedding of Papalexi's knockouts with
missing flags, the knowledge blocks in a response campaign's feature matrix, and a campaign that runs on them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from agent.benchmark import campaign_for
from perturbloop.config import parse_config
from perturbloop.design import gene_feature_matrix
from perturbloop.errors import ConfigError, PerturbloopError
from perturbloop.response_knowledge import GWT_DIR, GWT_FILES, GWT_NAMES, gwt_block, gwt_path

# Papalexi 2021 knockouts: in every GWT table / in some / in none
IN_ALL = ["IRF1", "STAT3", "SMAD4"]
IN_K562_TABLE_ONLY = ["ATF2", "CMTM6"]  # listed in the K562 comparison, not the polarization table
ABSENT = ["SPI1", "BRD4", "UBE2L6"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Small models: one thread."""


def test_gwt_block_of_papalexi_targets_flags_absent_genes(data_dir):
    genes = IN_ALL + IN_K562_TABLE_ONLY + ABSENT
    m, names = gwt_block(genes, data_dir)
    assert names == GWT_NAMES and m.shape == (len(genes), 17)
    flags = pd.DataFrame(m[:, -3:], index=genes, columns=names[-3:])
    assert (flags.loc[IN_ALL] == 0).all().all()
    assert (flags.loc[ABSENT] == 1).all().all() and (m[-len(ABSENT):, :-3] == 0).all()
    assert (flags.loc[IN_K562_TABLE_ONLY, "gwt_polarization_missing"] == 1).all()
    assert (flags.loc[IN_K562_TABLE_ONLY, "gwt_k562_missing"] == 0).all()
    # a value is the table's coefficient standardised over the regulators it lists
    pol = pd.read_csv(data_dir / GWT_DIR / GWT_FILES["gwt_cd4_polarization"], index_col=0)
    col = pol[pol["dataset_key"] == "activation_Stim8hr"].set_index("regulator")["coef_mean"]
    j = names.index("gwt_activation_Stim8hr")
    assert m[0, j] == pytest.approx((col["IRF1"] - col.mean()) / col.std())
    k562 = pd.read_csv(data_dir / GWT_DIR / GWT_FILES["gwt_cd4_k562_comparison"], index_col=0)
    degs = np.log1p(k562.groupby("target_contrast_gene_name")["n_degs_MASH_K562"].first())
    j = names.index("gwt_log_degs_K562")
    assert m[3, j] == pytest.approx((degs["ATF2"] - degs.mean()) / degs.std())
    # symbols are matched case-insensitively
    assert np.array_equal(gwt_block(["irf1"], data_dir)[0], m[:1])


def test_missing_gwt_tables_name_the_dataset(tmp_path):
    with pytest.raises(PerturbloopError, match="dataset .gwt_cd4_aging. .*is not in"):
        gwt_path("gwt_cd4_aging", tmp_path)


class _World:
    """The part of a ResponseWorld that gene_feature_matrix reads."""

    def __init__(self, genes, synthetic=False):
        self.genes, self.candidates, self.synthetic = genes, genes, synthetic

    def control_expression(self):
        return None


def _response_config(features, **design) -> dict:
    return {"name": "rk", "objective": "learn_response", "initial": 3, "rounds": 1, "batch_size": 2,
            "world": {"kind": "perturbseq", "dataset": "papalexi2021"},
            "design": {"features": features, **design}, "surrogate": {"kind": "linear"}}


def test_response_features_take_knowledge_and_gwt(data_dir):
    genes = IN_ALL + ABSENT
    cfg = parse_config(_response_config(["literature", "depmap", "gwt"]))
    X, names = gene_feature_matrix(genes, _World(genes), cfg, data_dir)
    assert names[:2] == ["literature_log_pubmed", "literature_missing"] and names[-17:] == GWT_NAMES
    assert X.shape == (len(genes), len(names)) and np.allclose(X.numpy().mean(0), 0.0)
    flag = X[:, names.index("gwt_aging_missing")].numpy()
    assert (flag[len(IN_ALL):] > 0).all() and (flag[:len(IN_ALL)] < 0).all()  # standardised 0/1 flag
    with pytest.raises(ConfigError, match="'literature' needs real gene symbols"):
        gene_feature_matrix(genes, _World(genes, synthetic=True), cfg, data_dir)
    assert parse_config(_response_config(["go", "knowledge", "gwt"])).design.features == ["go", "knowledge", "gwt"]
    with pytest.raises(ConfigError, match="design.features"):
        parse_config({"name": "s", "data": {"screen": "x.csv"}, "design": {"features": ["go", "gwt"]}})


def test_papalexi_campaign_runs_a_round_on_knowledge_and_gwt(data_dir, papalexi_slice):
    cfg = parse_config({
        "name": "rk-run", "objective": "learn_response", "initial": 3, "rounds": 1, "batch_size": 2,
        "world": {"kind": "perturbseq", "dataset": str(papalexi_slice), "key": "target", "control": "non-targeting"},
        "design": {"features": ["pathways", "depmap", "gwt"]},
        "surrogate": {"kind": "ensemble", "epochs": 40, "members": 2},
        "evaluation": {"seeds": 1, "test_fraction": 0.3, "baselines": ["mean"]},
    })
    row = campaign_for(cfg, "uncertainty", 0, data_dir)
    assert row["n_candidates"] == 10 and len(row["picks"]) == 2 and len(row["picks"][1]) == 2
    mse = row["metrics"]["mse_top20_de"]
    assert len(mse) == 2 and np.isfinite(mse).all() and len(row["metrics"]["mse_top20_de@mean"]) == 2
