"""The STRING network kernel inside the screen GP (`surrogate.network = true`): the kernel read from the design
space's string features, a measured hit lifting its network neighbours, and the config switch end to end."""

from __future__ import annotations

import numpy as np
import pytest
from forked import perturbloop
import torch

from perturbloop.config import parse_config
from perturbloop.errors import ConfigError


@pytest.fixture(scope="module")
def string_pool(small_pool_genes, data_dir):
    """The 600 small-pool IL2 genes with GO and STRING features."""
    from perturbloop.features import build_gene_pool

    return build_gene_pool(small_pool_genes, features=["go", "string"], data_dir=data_dir)


def test_coordinate_kernel_is_the_index_kernel(string_pool, data_dir):
    """Reading the eigen-coordinates from the (standardised, normalised) feature columns gives the same kernel
    as looking each gene up by its pool index (`NetworkKernel.for_genes`)."""
    from surrogates.gp import NetworkSpec, unit_bounds
    from surrogates.network_kernel import NetworkKernel

    pool = string_pool
    bounds = torch.stack([pool.X.min(0).values, pool.X.max(0).values])
    spec = NetworkSpec.for_space(pool.labels, pool.X, pool.feature_names, bounds, data_dir=data_dir)
    lo, hi = unit_bounds(bounds)
    xn = (pool.X - lo) / (hi - lo)
    net = spec.kernel().base_kernel
    net.time = 3.0
    ref = NetworkKernel.for_genes(pool.labels, data_dir=data_dir, dims=len(spec.columns), time=3.0)
    with torch.no_grad():
        K = net(xn).to_dense()
        R = ref(torch.arange(len(pool), dtype=torch.float64).unsqueeze(-1)).to_dense()
    assert torch.allclose(K, R, atol=1e-8)
    assert R.abs().max() > 0.1  # not trivially zero


def test_measured_hit_raises_its_string_neighbours(string_pool, slice_csv, data_dir, one_torch_thread):
    """Fit on 60 measured non-hits, then again with one hub gene measured as a strong hit: the posterior mean of
    the hub's unmeasured STRING neighbours rises, that of the other genes does not; the lift is larger with the
    network kernel than with the feature kernel alone (which also sees the string features)."""
    from agent.parts import model_factory
    from perturbloop.data import knowledge as kn

    pool = string_pool
    W, net_genes = kn.string_adjacency(data_dir, min_score=700)
    row = {g: i for i, g in enumerate(net_genes)}
    in_pool = [g for g in pool.labels if g in row]
    sub = W[[row[g] for g in in_pool]][:, [row[g] for g in in_pool]].tocsr()
    hub_i = int(np.argmax(np.diff(sub.indptr)))
    hub, nbrs = in_pool[hub_i], {in_pool[j] for j in sub[hub_i].indices}
    rng = np.random.default_rng(0)
    others = sorted(set(pool.labels) - nbrs - {hub})
    base = {g: float(rng.normal(0, 0.1)) for g in rng.choice(others, 60, replace=False)}
    with_hit = {**base, hub: 3.0}
    near = pool.indices(sorted(nbrs))
    far = pool.indices([g for g in others if g not in base])
    assert len(near) >= 20

    def lift(network: bool) -> tuple[float, float]:
        make = model_factory(_slice_config(slice_csv, network=network), pool, data_dir=data_dir)
        means = []
        for obs in (base, with_hit):
            gp = make(0, {})
            gp.fit(pool.X[pool.indices(list(obs))], torch.tensor(list(obs.values()), dtype=torch.float64))
            means.append(gp.posterior(pool.X).mean)
        d = means[1] - means[0]
        return float(d[near].mean()), float(d[far].mean())

    near_net, far_net = lift(True)
    near_feat, _ = lift(False)
    assert near_net > 0.5 and abs(far_net) < 0.1 and near_net > far_net + 0.5
    assert near_net > near_feat


def test_network_gp_fits_its_time_and_scale(string_pool, slice_csv, data_dir, one_torch_thread):
    """The diffusion time and the network kernel's scale are GP hyperparameters, fitted (and stored for warm
    starts) like the rest; a warm start from them reproduces the same model."""
    from agent.parts import model_factory

    pool = string_pool
    make = model_factory(_slice_config(slice_csv, network=True, network_kernel="regularized_laplacian"), pool,
                         data_dir=data_dir)
    idx = torch.arange(0, len(pool), 4)
    y = torch.linspace(0, 1, len(idx), dtype=torch.float64)
    gp = make(0, {})
    t0 = gp.network.kernel().base_kernel.time.item()
    gp.fit(pool.X[idx], y)
    params = gp.params
    time_key = next(k for k in params if k.endswith("raw_time"))
    assert any(k.endswith("raw_outputscale") for k in params)
    fitted = gp.model.covar_module.kernels[1].base_kernel
    assert fitted.kind == "regularized_laplacian" and fitted.time.item() != pytest.approx(t0)
    warm = make(0, {k: v for k, v in params.items()})
    warm.max_iter = 1
    warm.fit(pool.X[idx], y)
    assert warm.params[time_key] == pytest.approx(params[time_key], rel=1e-3, abs=1e-3)


def _slice_config(slice_csv, **surrogate):
    return parse_config({"name": "net", "rounds": 2, "batch_size": 24, "seed": 1, "data": {"screen": str(slice_csv)},
                         "design": {"features": ["go", "string"]}, "acquisition": {"kind": "greedy"},
                         "surrogate": surrogate})


@pytest.mark.slow
def test_network_switch_end_to_end_on_the_il2_slice(il2_slice_1500, data_dir, tmp_path, one_torch_thread):
    """`surrogate.network = true` in a campaign config: the loop's GP carries the network kernel (its fitted
    diffusion time is stored with the round's fit) and the campaign runs to the end."""
    from agent.runner import run_campaign
    from perturbloop.store import Store

    store = Store(str(tmp_path / "pl.db"))
    res = run_campaign(_slice_config(il2_slice_1500, network=True), store, data_dir)
    assert res.status == "finished"
    fits = [store.model_fit(r.id) for r in store.rounds("net")]
    assert fits[0].surrogate == "none" and fits[1].surrogate == "gp"
    assert any(k.endswith("base_kernel.raw_time") for k in fits[1].params)


def test_network_switch_needs_string_features_and_a_gp(il2_slice_1500):
    with pytest.raises(ConfigError, match="design.features"):
        parse_config({"name": "n", "data": {"screen": str(il2_slice_1500)}, "design": {"features": ["go"]},
                      "surrogate": {"network": True}})
    with pytest.raises(ConfigError, match="surrogate.kind = 'gp'"):
        parse_config({"name": "n", "data": {"screen": str(il2_slice_1500)}, "design": {"features": ["string"]},
                      "surrogate": {"kind": "mean", "network": True}})
    with pytest.raises(ConfigError, match="network_kernel"):
        parse_config({"name": "n", "data": {"screen": str(il2_slice_1500)}, "design": {"features": ["string"]},
                      "surrogate": {"network": True, "network_kernel": "heat"}})


def test_benchmark_network_flag_reaches_the_campaign_config(il2_slice_1500):
    """`perturbloop benchmark --network` (WorldSpec.network) is the campaign's `surrogate.network`."""
    from agent.benchmark import PolicySpec, WorldSpec, benchmark_config

    spec = WorldSpec(str(il2_slice_1500), features=("go", "string"), network=True)
    assert benchmark_config(spec, PolicySpec.parse("best"), 0, 2, 8).surrogate.network
    assert not benchmark_config(WorldSpec(str(il2_slice_1500), features=("go", "string")), PolicySpec.parse("best"),
                                0, 2, 8).surrogate.network
    with pytest.raises(ConfigError, match="design.features"):
        benchmark_config(WorldSpec(str(il2_slice_1500), features=("go",), network=True), PolicySpec.parse("best"), 0, 2, 8)


@pytest.mark.slow
def test_benchmark_network_without_string_features_is_one_error(il2_slice_1500, data_dir, tmp_path):
    proc = perturbloop("benchmark", "--screen", str(il2_slice_1500), "--features", "go", "--network", "--seeds", "1",
                       "--rounds", "2", "--batch", "8", "--data-dir", str(data_dir), "--out", str(tmp_path / "r.json"),
                       timeout=300)  # a process of its own (tests/forked.py)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error:") and "design.features" in proc.stderr
    assert not (tmp_path / "r.json").exists()
