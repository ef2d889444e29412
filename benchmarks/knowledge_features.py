"""Build time of each knowledge feature block on every gene of a screen, and a quick sanity number.

    python benchmarks/knowledge_features.py                  # Schmidt IL2 (18,877 genes), writes results
    python benchmarks/knowledge_features.py --screen zhuang2019_nk \
        --out benchmarks/results/knowledge_features_zhuang2019_nk.json   # one file per screen

Times: each block built from the knowledge files into an empty cache (`PERTURBLOOP_CACHE_DIR` is a
fresh temporary directory; BLAS limited to `--threads`), then read back from the cache.

Sanity number (not a tuned result): a ridge regression (alpha chosen by inner CV over a fixed grid)
from each block, standardised, to `|score|`, 5-fold cross-validated over all genes; reported are
the Spearman correlation of the out-of-fold predictions with `|score|` and their AUC for the hits
(top 5% by |score|, the benchmark protocol's definition). GO (64 + 1) is the reference.

Round time with the network kernel (`--kernel-round`): the project GP's setting (exact GP, default
RBF-ARD kernel, log |score| target, 10 warm L-BFGS iterations) on GO features, fitted on 640 random
genes (5 rounds x 128) and evaluated over all genes in chunks of 256, with and without
`+ ScaleKernel(NetworkKernel)` over a pool-index column (`surrogates/network_kernel.py`).

Also, when the `.rda` sources are in `<data dir>/knowledge/source/`, checks that converting them
gives the shipped tables (the download route builds the same data). Writes
benchmarks/results/knowledge_features.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "knowledge_features.json"
FOLDS = 5
HIT_FRACTION = 0.05
ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def _sanity(X, y, hits, seed: int = 0) -> dict:
    import numpy as np
    from scipy.stats import spearmanr
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.zeros(len(y))
    for train, test in KFold(FOLDS, shuffle=True, random_state=seed).split(X):
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)).fit(X[train], y[train])
        pred[test] = model.predict(X[test])
    return {"spearman": round(float(spearmanr(pred, y).statistic), 4), "auc_hits": round(float(roc_auc_score(hits, pred)), 4)}


def _kernel_round(genes: list[str], go, y, data_dir, n_obs: int = 640, chunk: int = 256) -> dict:
    """Seconds to fit and to score the whole pool, GO kernel alone and GO + network kernel."""
    import warnings

    import numpy as np
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Normalize, Standardize
    from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
    from gpytorch.kernels import ScaleKernel
    from gpytorch.mlls import ExactMarginalLogLikelihood

    from surrogates.network_kernel import NetworkKernel

    d = go.shape[1]
    X = torch.from_numpy(np.hstack([go, np.arange(len(genes))[:, None]]))
    obs = torch.from_numpy(np.random.default_rng(0).choice(len(genes), n_obs, replace=False))
    yo = torch.from_numpy(y)[obs].unsqueeze(-1)
    yo = torch.log(yo + yo.median())
    lo, hi = X[:, :d].min(0).values, X[:, :d].max(0).values
    bounds = torch.stack([lo, torch.where(hi - lo > 1e-8, hi, lo + 1)])
    out = {}
    for label in ("go_kernel", "go_kernel+network_kernel"):
        t0 = time.perf_counter()
        covar = get_covar_module_with_dim_scaled_prior(ard_num_dims=d, active_dims=list(range(d)))
        if label.endswith("network_kernel"):
            covar = covar + ScaleKernel(NetworkKernel.for_genes(genes, data_dir=data_dir, active_dims=[d]))
        gp = SingleTaskGP(X[obs], yo, covar_module=covar, outcome_transform=Standardize(1),
                          input_transform=Normalize(d + 1, indices=list(range(d)), bounds=bounds))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp), optimizer_kwargs={"options": {"maxiter": 10}})
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(genes), chunk):
                gp.posterior(X[i:i + chunk])
        out[label] = {"fit_s": round(fit, 2), "posterior_all_genes_s": round(time.perf_counter() - t0, 2)}
    return out


def _check_converters(data_dir: Path) -> dict:
    import pandas as pd

    from perturbloop.data import knowledge as kn

    src, out = data_dir / "knowledge" / "source", {}
    with tempfile.TemporaryDirectory() as tmp:
        for c in ("hallmark", "reactome"):
            if (src / f"pathways_{c}.rda").is_file():
                kn.convert_gmt_rda([src / f"pathways_{c}.rda"], Path(tmp) / f"{c}.gmt")
                out[f"msigdb_{c}"] = (Path(tmp) / f"{c}.gmt").read_bytes() == (data_dir / f"knowledge/msigdb_{c}.gmt").read_bytes()
        rda = src / "string.v12.Entrez.ntm.700.400.k3.rda"
        if rda.is_file():
            kn.convert_string_rda([rda], Path(tmp) / "s.tsv.gz")
            a = pd.read_csv(Path(tmp) / "s.tsv.gz", sep="\t")
            b = pd.read_csv(data_dir / "knowledge/string_v12_edges.tsv.gz", sep="\t")[a.columns]
            key = list(a.columns)
            out["string_v12"] = a.sort_values(key).reset_index(drop=True).equals(b.sort_values(key).reset_index(drop=True))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--screen", default="schmidt2021_il2")
    ap.add_argument("--data-dir", default=os.environ.get("PERTURBLOOP_DATA_DIR"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--kernel-round", action="store_true", help="also time a GP round with the network kernel")
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ["PERTURBLOOP_CACHE_DIR"] = tempfile.mkdtemp(prefix="knowledge-bench-")
    sys.path.insert(0, str(HERE.parent))
    import numpy as np

    from perturbloop.data import load_screen
    from perturbloop.features import go_embedding
    from perturbloop.genes import gene_index
    from perturbloop.knowledge_features import KNOWLEDGE_BLOCKS, knowledge_features

    screen = load_screen(args.screen, args.data_dir)
    genes = list(screen.scores.index)
    y = screen.scores.abs().to_numpy(float)
    hits = np.isin(genes, list(screen.hits(HIT_FRACTION)))
    gene_index(args.data_dir)  # the alias table, shared by every block: not counted in a block's time
    rows = {}
    blocks = {}
    for name in (*KNOWLEDGE_BLOCKS, "go"):
        t0 = time.perf_counter()
        m, names = go_embedding(genes, data_dir=args.data_dir) if name == "go" else knowledge_features(genes, name, data_dir=args.data_dir)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        (go_embedding(genes, data_dir=args.data_dir) if name == "go" else knowledge_features(genes, name, data_dir=args.data_dir))
        cached = time.perf_counter() - t0
        blocks[name] = m
        rows[name] = {"dims": len(names), "build_s": round(build, 2), "cached_s": round(cached, 3),
                      "missing_fraction": round(float(m[:, -1].mean()), 3), **_sanity(m, y, hits)}
        print(name, rows[name], flush=True)
    allk = np.hstack([blocks[b] for b in KNOWLEDGE_BLOCKS])
    rows["knowledge"] = {"dims": allk.shape[1], **_sanity(allk, y, hits)}
    rows["go+knowledge"] = {"dims": allk.shape[1] + blocks["go"].shape[1], **_sanity(np.hstack([blocks["go"], allk]), y, hits)}
    print("knowledge", rows["knowledge"], "\ngo+knowledge", rows["go+knowledge"], flush=True)
    result = {
        "screen": args.screen, "genes": len(genes), "hits": int(hits.sum()), "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus", "blocks": rows,
        "sanity": f"ridge (alpha by inner CV over {ALPHAS}) from each standardised block to |score|, {FOLDS}-fold CV; "
                  f"Spearman with |score| and AUC for the top {HIT_FRACTION:.0%} hits",
        "converters_reproduce_shipped_tables": _check_converters(Path(args.data_dir)) if args.data_dir else {},
    }
    if args.kernel_round:
        import torch

        torch.set_num_threads(args.threads)
        result["round_with_network_kernel"] = _kernel_round(genes, blocks["go"], y, args.data_dir)
        print(result["round_with_network_kernel"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
