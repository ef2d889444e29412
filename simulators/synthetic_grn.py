"""A synthetic gene-regulatory world with known ground truth (labelled synthetic everywhere).

Genes are named ``SYN0001``...; every AnnData it makes has ``uns['synthetic'] = True``.

Model (all in natural-log "activity" space, 0 = unperturbed):

- **Network.** ``n_regulators`` regulators in a fixed order; each gene (regulators included) is
  regulated by earlier regulators with probability `density`, with signed weights
  (|w| ~ U(0.5, 1.5)). The steady state is one pass in that order (an acyclic network):
  ``l_g = s * tanh(sum_j w_gj * l_j / s)`` -- a saturating, non-linear response (s = `saturation`).
- **Perturbations** are CRISPRi knock-downs: a perturbed gene's activity is multiplied by
  ``1 - knockdown`` (its log activity shifted by ``log(1 - knockdown)``) and the change propagates
  downstream. Any set of genes can be perturbed; labels are ``A`` or ``A+B``.
- **Planted interactions.** `pairs_per_type` gene pairs of each type get two "effector" genes A, B
  (themselves targets of the network) with private targets (``l_t = w * l_A``) and a shared module
  of `module_size` genes that reads both through a gate:

  ============  =====================================  ==========================================
  type          module input                           double vs singles on the module
  ============  =====================================  ==========================================
  additive      ``l_A + l_B``                          exactly the sum
  synergistic   ``2 log((e^l_A + e^l_B) / 2)``          (redundant pair, OR) ~1.9x the sum
  buffering     ``min(l_A, l_B)``                      (same complex, AND) = either single
  epistatic     ``l_A + 0.3 e^l_A l_B``                A masks B: the double looks like A alone
  ============  =====================================  ==========================================

- **Counts.** Expected UMIs ``mu_g * exp(l_g)`` (``mu_g`` log-normal), times a per-cell size factor
  and a per-cell program (cell-to-cell variation), drawn negative-binomial (gene-wise dispersion).

Ground truth: `true_lfc` (natural-log fold change of expected expression, ``scale="log_mean"``, or
the expected pseudobulk LFC of :func:`perturbloop.responses.pseudobulk_lfc`, ``scale="pseudobulk"``)
and `interactions`: every pair of perturbable genes (regulators and effectors) classified by
:func:`classify_interaction` on the noise-free log-mean truth, planted or emergent from the network.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import special

from perturbloop.perturbation import CONTROL
from perturbloop.perturbation import canonical_label
from perturbloop.perturbseq import UnknownPerturbationError
from perturbloop.responses import TARGET_SUM
from simulators.perturbseq_replay import CELLS_PER_RUN, PerturbSeqReading

INTERACTION_TYPES = ("additive", "synergistic", "buffering", "epistatic")
# classify_interaction: a pair is additive when ||double - (A + B)|| <= ADDITIVE_REL * ||A + B|| + ADDITIVE_ABS
ADDITIVE_REL = 0.1
ADDITIVE_ABS = 0.05
# epistatic: the double is within EPISTASIS_MATCH of one single (relative) while the singles differ by
# more than EPISTASIS_SINGLES_DIFFER (relative to the double), on the genes that carry the interaction
EPISTASIS_MATCH = 0.25
EPISTASIS_SINGLES_DIFFER = 0.5
EPISTATIC_GAIN = 0.3  # weight of the masked gene B in the epistatic gate (its single is 0.3x A's)


def classify_interaction(single_a: np.ndarray, single_b: np.ndarray, double: np.ndarray) -> dict:
    """Type and magnitude of a pair's interaction from three LFC vectors (any one scale).

    ``delta = double - (single_a + single_b)`` (deviation from additivity);
    ``magnitude = ||delta||_2``. On the genes carrying the interaction (``|delta|`` above 10% of its
    largest entry), ``ratio = <double, a + b> / ||a + b||^2``:

    - additive: ``magnitude <= ADDITIVE_REL * ||a + b|| + ADDITIVE_ABS``;
    - synergistic: ``ratio > 1`` (the double goes further than the sum);
    - epistatic: sub-additive, the singles differ and the double matches one of them (that
      gene is ``dominant``: it masks the other);
    - buffering: sub-additive otherwise.

    Returns:
        dict with type, magnitude, ratio (NaN when additive), dominant ("a", "b" or None).
    """
    a, b, d = (np.asarray(x, dtype=float) for x in (single_a, single_b, double))
    s = a + b
    delta = d - s
    mag = float(np.linalg.norm(delta))
    if mag <= ADDITIVE_REL * float(np.linalg.norm(s)) + ADDITIVE_ABS:
        return {"type": "additive", "magnitude": mag, "ratio": float("nan"), "dominant": None}
    g = np.abs(delta) > 0.1 * np.abs(delta).max()
    ss = float(s[g] @ s[g])
    ratio = float(d[g] @ s[g]) / ss if ss > 1e-12 else float("inf")
    if ratio > 1.0:
        return {"type": "synergistic", "magnitude": mag, "ratio": ratio, "dominant": None}
    dn = max(float(np.linalg.norm(d[g])), 1e-12)
    err = {"a": float(np.linalg.norm(d[g] - a[g])) / dn, "b": float(np.linalg.norm(d[g] - b[g])) / dn}
    best = min(err, key=err.get)
    if err[best] < EPISTASIS_MATCH and float(np.linalg.norm(a[g] - b[g])) / dn > EPISTASIS_SINGLES_DIFFER:
        return {"type": "epistatic", "magnitude": mag, "ratio": ratio, "dominant": best}
    return {"type": "buffering", "magnitude": mag, "ratio": ratio, "dominant": None}


def _gate(kind: str, la: np.ndarray, lb: np.ndarray) -> np.ndarray:
    if kind == "additive":
        return la + lb
    if kind == "synergistic":
        return 2.0 * np.log((np.exp(la) + np.exp(lb)) / 2.0)
    if kind == "buffering":
        return np.minimum(la, lb)
    if kind == "epistatic":
        return la + EPISTATIC_GAIN * np.exp(la) * lb
    raise ValueError(kind)


class SyntheticGRN:
    """A seeded synthetic Perturb-seq world (module docstring): simulate cells, know the truth.

    Args:
        n_genes: measured genes (all of them simulated).
        n_regulators: genes that regulate others (the network's nodes with out-edges).
        density: probability of each allowed regulator -> gene edge.
        seed: seeds the network, expression levels and every cell draw.
        pairs_per_type: planted pairs of each interaction type.
        module_size: genes in each planted pair's shared module.
        n_private: private targets of each effector gene.
        knockdown: fraction of a perturbed gene's activity removed (CRISPRi efficiency).
        saturation: s in ``s * tanh(u / s)``; larger = more linear.
        mean_umi: median expected UMIs per gene and cell at baseline.
        dispersion: median negative-binomial dispersion (variance = mean + dispersion * mean^2).
        size_factor_sd, program_sd: cell-to-cell variation (log-normal size factor; a random
            per-cell program with gene loadings of this sd).
        cells_per_run, failure_rate: for `run` (the world used as a lab).

    Example:
        >>> grn = SyntheticGRN(n_genes=150, n_regulators=10, seed=1)
        >>> cells = grn.simulate(["ctrl", grn.perturbable[0], "+".join(grn.perturbable[:2])], 100)
        >>> grn.interactions.query("planted").type.value_counts()
    """

    kind = "perturbseq"

    def __init__(self, n_genes: int = 200, n_regulators: int = 20, density: float = 0.1, seed: int = 0, *,
                 pairs_per_type: int = 2, module_size: int = 5, n_private: int = 3, knockdown: float = 0.9,
                 saturation: float = 2.0, mean_umi: float = 2.0, dispersion: float = 0.2, size_factor_sd: float = 0.25,
                 program_sd: float = 0.15, cells_per_run: int = CELLS_PER_RUN, failure_rate: float = 0.0):
        n_pairs = len(INTERACTION_TYPES) * pairs_per_type
        needed = n_regulators + n_pairs * (2 + module_size + 2 * n_private)
        if n_regulators < 1 or pairs_per_type < 0 or module_size < 1 or n_private < 0:
            raise ValueError("n_regulators and module_size must be >= 1, pairs_per_type and n_private >= 0")
        if n_genes < needed + 1:
            raise ValueError(
                f"n_genes={n_genes} is too small: {n_regulators} regulators + {n_pairs} planted pairs x "
                f"(2 + module_size {module_size} + 2 x n_private {n_private}) need {needed} genes plus background"
            )
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        if not 0.0 < knockdown < 1.0:
            raise ValueError(f"knockdown must be in (0, 1), got {knockdown}")
        if not 0.0 <= failure_rate < 1.0:
            raise ValueError(f"failure_rate must be in [0, 1), got {failure_rate}")
        self.params = dict(n_genes=n_genes, n_regulators=n_regulators, density=density, seed=seed,
                           pairs_per_type=pairs_per_type, module_size=module_size, n_private=n_private,
                           knockdown=knockdown, saturation=saturation, mean_umi=mean_umi, dispersion=dispersion,
                           size_factor_sd=size_factor_sd, program_sd=program_sd)
        self.seed = seed
        self.knockdown = knockdown
        self.saturation = saturation
        self.cells_per_run = cells_per_run
        self.failure_rate = failure_rate
        rng = np.random.default_rng([seed, 0x6E])
        G, R = n_genes, n_regulators
        # internal layout: regulators, effector pairs, modules, private targets, background targets
        self._R = np.arange(R)
        kinds = [kind for kind in INTERACTION_TYPES for _ in range(pairs_per_type)]
        self._planted = [{"type": kind, "a": R + 2 * i, "b": R + 2 * i + 1} for i, kind in enumerate(kinds)]
        pos = R + 2 * len(kinds)
        for p in self._planted:
            p["module"] = np.arange(pos, pos + module_size)
            pos += module_size
        for p in self._planted:
            p["private_a"] = np.arange(pos, pos + n_private)
            p["private_b"] = np.arange(pos + n_private, pos + 2 * n_private)
            pos += 2 * n_private
        self._effectors = np.array([[p["a"], p["b"]] for p in self._planted], dtype=int).ravel()
        self._background = np.arange(pos, G)
        self._networked = np.concatenate([self._effectors, self._background]).astype(int)  # targets of regulators

        def weights(shape):
            return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 1.5, size=shape)

        # W[g, j]: regulator j -> gene g; regulators only take input from earlier regulators (acyclic)
        mask = rng.random((G, R)) < density
        reg_block = mask[:R]  # a view: regulator i only hears regulators j < i
        reg_block[np.triu_indices(R)] = False
        rows = np.concatenate([self._R, self._networked])
        full = np.zeros((G, R), dtype=bool)
        full[rows] = mask[rows]
        # every regulator reaches at least two background genes, so its single has an effect
        for j in range(R):
            if full[self._background, j].sum() < 2 and len(self._background) >= 2:
                full[rng.choice(self._background, 2, replace=False), j] = True
        self._W = np.zeros((G, R))
        self._W[full] = weights(int(full.sum()))
        for p in self._planted:
            p["w_module"] = weights(module_size)
            p["w_private_a"] = weights(n_private)
            p["w_private_b"] = weights(n_private)
        # expression: baseline means, dispersions, program loadings
        self._mu = mean_umi * np.exp(rng.normal(0.0, 1.0, G))
        self._phi = dispersion * np.exp(rng.normal(0.0, 0.5, G))
        self._program = rng.normal(0.0, program_sd, G)
        self.size_factor_sd = size_factor_sd
        # names: a random order, so a gene's role is not visible from its name
        width = max(4, len(str(G)))
        self._names = np.array([f"SYN{k + 1:0{width}d}" for k in rng.permutation(G)])
        self._index = {n: i for i, n in enumerate(self._names)}
        self._cols = np.argsort(self._names)  # output columns in name order: the layout stays hidden
        self._calls = 0
        self._attempts: dict[str, int] = {}
        self._interactions: pd.DataFrame | None = None

    @property
    def genes(self) -> list[str]:
        """All simulated (measured) genes, sorted: the column order of every AnnData and LFC table."""
        return [str(n) for n in self._names[self._cols]]

    @property
    def perturbable(self) -> list[str]:
        """Genes whose knock-down reaches other genes: regulators and planted effectors (sorted)."""
        return sorted(str(self._names[i]) for i in np.concatenate([self._R, self._effectors]))

    def candidate_pairs(self) -> list[str]:
        """Every pair of perturbable genes, as canonical labels (the pair design space)."""
        return [f"{a}+{b}" for a, b in combinations(self.perturbable, 2)]

    @property
    def perturbations(self) -> list[str]:
        """What `run` accepts as a design space: perturbable singles, then all their pairs."""
        return self.perturbable + self.candidate_pairs()

    def _parse(self, labels: Iterable[str]) -> list[tuple[str, np.ndarray]]:
        out, unknown = [], []
        for lab in labels:
            c = canonical_label(lab)
            genes = [] if c in (None, CONTROL) else c.split("+")
            if c is None or any(g not in self._index for g in genes):
                unknown.append(str(lab))
            else:
                out.append((c, np.array([self._index[g] for g in genes], dtype=int)))
        if unknown:
            raise UnknownPerturbationError(unknown, "this synthetic world", "genes are named SYN0001...")
        return out

    def _steady_state(self, perturbed: Sequence[np.ndarray]) -> np.ndarray:
        """Log activities (L x G) for L perturbations given as arrays of gene indices."""
        L, G = len(perturbed), len(self._names)
        off = np.zeros((L, G))
        d = np.log1p(-self.knockdown)
        for i, idx in enumerate(perturbed):
            off[i, idx] = d
        s = self.saturation
        la = np.zeros((L, G))
        W = self._W
        for r in self._R:
            u = la[:, : len(self._R)] @ W[r]
            la[:, r] = s * np.tanh(u / s) + off[:, r]
        tg = self._networked
        u = la[:, : len(self._R)] @ W[tg].T
        la[:, tg] = s * np.tanh(u / s) + off[:, tg]
        for p in self._planted:
            a, b = la[:, p["a"]], la[:, p["b"]]
            la[:, p["private_a"]] = a[:, None] * p["w_private_a"] + off[:, p["private_a"]]
            la[:, p["private_b"]] = b[:, None] * p["w_private_b"] + off[:, p["private_b"]]
            la[:, p["module"]] = _gate(p["type"], a, b)[:, None] * p["w_module"] + off[:, p["module"]]
        return la

    def true_lfc(self, labels: Sequence[str], *, scale: Literal["pseudobulk", "log_mean"] = "pseudobulk",
                 target_sum: float = TARGET_SUM) -> pd.DataFrame:
        """The noise-free response of each perturbation vs control (index = canonical labels).

        ``scale="log_mean"``: ``log(E[x | p] / E[x | ctrl])`` per gene (the model's own truth; the
        interaction types are defined on it). ``scale="pseudobulk"`` (default): the expected value
        of :func:`perturbloop.responses.pseudobulk_lfc` on this world's cells, computed from the
        negative-binomial distribution of each gene's counts at the expected library size
        (the per-cell size factor and program are left out of the expectation: they move it
        by ~0.01 on the genes that matter; see the tests).
        """
        parsed = self._parse(labels)
        la = self._steady_state([idx for _, idx in parsed])[:, self._cols]
        if scale == "pseudobulk":
            e_ctrl = self._expected_lognorm(np.zeros((1, la.shape[1])), target_sum)[0]
            la = np.vstack([self._expected_lognorm(la[i:i + 64], target_sum) for i in range(0, len(la), 64)]) - e_ctrl \
                if len(la) else np.zeros((0, la.shape[1]))
        elif scale != "log_mean":
            raise ValueError(f"scale must be 'pseudobulk' or 'log_mean', got {scale!r}")
        return pd.DataFrame(la, index=pd.Index([lab for lab, _ in parsed], name="perturbation"),
                            columns=pd.Index(self.genes, name="gene"))

    def _expected_lognorm(self, la: np.ndarray, target_sum: float) -> np.ndarray:
        """E[log1p(target_sum * x / L)] with x ~ NB(m, phi), m = mu * exp(la), L = sum(m).

        Exact sums over k, with entries bucketed by how far their distribution reaches
        (mean + 8 sd), so a few highly expressed genes do not set the length of every sum.
        """
        m = self._mu[self._cols] * np.exp(la)  # chunk x G, columns in name order
        c = target_sum / m.sum(axis=1, keepdims=True)
        r = np.broadcast_to(1.0 / self._phi[self._cols], m.shape)
        c = np.broadcast_to(c, m.shape)
        reach = m + 8.0 * np.sqrt(m + m * m / r) + 16.0
        out = np.empty(m.shape)
        edges = [64, 256, 1024, 4096, 16384, np.inf]
        lo = 0.0
        for hi in edges:
            sel = (reach > lo) & (reach <= hi)
            lo = hi
            if not sel.any():
                continue
            kmax = int(np.ceil(reach[sel].max())) if np.isinf(hi) else int(hi)
            k = np.arange(kmax + 1, dtype=float)[None, :]
            mm, rr, cc = m[sel][:, None], r[sel][:, None], c[sel][:, None]
            logp = (special.gammaln(k + rr) - special.gammaln(rr) - special.gammaln(k + 1.0)
                    + rr * np.log(rr / (rr + mm)) + k * np.log(mm / (rr + mm)))
            out[sel] = (np.exp(logp) * np.log1p(cc * k)).sum(axis=1)
        return out

    def simulate(self, labels: Sequence[str], cells_per_perturbation: int | Mapping[str, int] = 100, *,
                 seed: int | None = None) -> ad.AnnData:
        """Cells (raw counts) for each label (``ctrl``, ``A`` or ``A+B``...).

        Args:
            labels: perturbations to simulate; include ``ctrl`` for control cells.
            cells_per_perturbation: cells per label, or label -> cells.
            seed: draw seed; None: a new draw on each call (reproducible from the world's seed).

        Returns:
            AnnData (cells x `genes`): raw counts in ``X`` and ``layers['counts']``,
            ``obs['perturbation']`` canonical labels, ``uns['synthetic'] = True``.
        """
        parsed = self._parse(labels)
        if seed is None:
            seed = self._calls
            self._calls += 1
        return self._draw(parsed, cells_per_perturbation, (1, seed))

    def _draw(self, parsed: list[tuple[str, np.ndarray]], cells: int | Mapping[str, int],
              stream: tuple[int, ...]) -> ad.AnnData:
        la = self._steady_state([idx for _, idx in parsed])
        blocks, obs_labels, names = [], [], []
        tag = ".".join(map(str, stream))
        for i, (lab, _) in enumerate(parsed):
            n = cells.get(lab, 0) if isinstance(cells, Mapping) else int(cells)
            if n <= 0:
                continue
            rng = np.random.default_rng([self.seed, *stream, zlib.crc32(lab.encode()), i])
            blocks.append(self._cells(la[i], n, rng))
            obs_labels += [lab] * n
            names += [f"{lab}:{tag}:{i}:{j}" for j in range(n)]
        X = sp.vstack(blocks).tocsr() if blocks else sp.csr_matrix((0, len(self._names)), dtype=np.float32)
        cats = sorted(set(obs_labels), key=lambda x: (x != CONTROL, x))
        obs = pd.DataFrame({"perturbation": pd.Categorical(obs_labels, categories=cats)},
                           index=pd.Index(names, dtype=str))
        out = ad.AnnData(X=X.copy(), obs=obs, var=pd.DataFrame(index=self.genes))
        out.layers["counts"] = X
        out.uns["synthetic"] = True
        out.uns["synthetic_grn"] = {**self.params, "draw": tag}
        return out

    def _cells(self, la: np.ndarray, n: int, rng: np.random.Generator) -> sp.csr_matrix:
        size = np.exp(rng.normal(0.0, self.size_factor_sd, n))
        z = rng.normal(0.0, 1.0, n)
        mean = size[:, None] * self._mu[None, :] * np.exp(la[None, :] + z[:, None] * self._program[None, :])
        r = 1.0 / self._phi
        lam = rng.gamma(r[None, :], mean / r[None, :])
        return sp.csr_matrix(rng.poisson(lam)[:, self._cols].astype(np.float32))

    def control(self, n: int | None = None) -> ad.AnnData:
        """`n` control cells (default `cells_per_run` x 10), the same on every call."""
        return self._draw(self._parse([CONTROL]), n or 10 * self.cells_per_run, (3,))

    def run(self, labels: Sequence[str]) -> list[PerturbSeqReading]:
        """Fresh cells for each label (a new draw per attempt); failures with `failure_rate`."""
        parsed = self._parse(labels)
        out = []
        for lab, _ in parsed:
            if lab == CONTROL:
                raise UnknownPerturbationError([lab], "this synthetic world", "the control is not run: use control()")
            attempt = self._attempts.get(lab, 0)
            self._attempts[lab] = attempt + 1
            rng = np.random.default_rng([self.seed, 2, zlib.crc32(lab.encode()), attempt])
            if rng.random() < self.failure_rate:
                out.append(PerturbSeqReading(lab, None,
                                             f"run of {lab} failed in the lab (simulated; attempt {attempt + 1})"))
            else:
                out.append(PerturbSeqReading(lab, self._draw(self._parse([lab]), self.cells_per_run, (2, attempt))))
        return out

    @property
    def interactions(self) -> pd.DataFrame:
        """Every pair of perturbable genes with its interaction on the log-mean truth (evaluation only).

        Index: pair label. Columns: gene_a, gene_b, type (additive | synergistic | buffering |
        epistatic), magnitude (``||lfc_AB - lfc_A - lfc_B||_2``), ratio, dominant (the masking gene
        of an epistatic pair), planted (bool), planted_type (the gate it was built with, or None).
        Sorted by magnitude, strongest first.
        """
        if self._interactions is None:
            self._interactions = self._classify_all()
        return self._interactions.copy()

    def _classify_all(self) -> pd.DataFrame:
        singles = self.perturbable
        pairs = list(combinations(singles, 2))
        lfc = self.true_lfc(singles + [f"{a}+{b}" for a, b in pairs], scale="log_mean")
        planted = {}
        for p in self._planted:
            a, b = str(self._names[p["a"]]), str(self._names[p["b"]])
            planted["+".join(sorted((a, b)))] = (p["type"], a)
        rows = []
        S = lfc.loc[singles].to_numpy()
        pos = {g: i for i, g in enumerate(singles)}
        D = lfc.iloc[len(singles):].to_numpy()
        for k, (a, b) in enumerate(pairs):
            c = classify_interaction(S[pos[a]], S[pos[b]], D[k])
            label = f"{a}+{b}"
            dom = {"a": a, "b": b}.get(c["dominant"]) if c["dominant"] else None
            pt = planted.get(label)
            rows.append({"perturbation": label, "gene_a": a, "gene_b": b, "type": c["type"],
                         "magnitude": c["magnitude"], "ratio": c["ratio"], "dominant": dom,
                         "planted": pt is not None, "planted_type": pt[0] if pt else None,
                         "planted_dominant": pt[1] if pt and pt[0] == "epistatic" else None})
        df = pd.DataFrame(rows).set_index("perturbation")
        return df.sort_values("magnitude", ascending=False, kind="stable")
