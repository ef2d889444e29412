"""Campaign configuration (TOML), validated by pydantic; a bad field is an error that names it.

One model for every kind of campaign. A pooled screen names its screen in `[data]` (one readout per
gene: the screen's score); a response campaign names the `[world]` that answers its experiments
(Perturb-seq: a transcriptome LFC vector per perturbation; a pair screen: the pair phenotype) and
learns (objective `learn_response`) or drives (objective `maximize`) that response. `lab`,
`approval`, `schedule` and `evaluation` apply to every kind. Defaults that differ by kind (batch
size, model, policy, features) are filled in from `RESPONSE_DEFAULTS` for a `[world]` campaign,
`CONTEXTS_DEFAULTS` for a campaign across contexts and `SCREEN_DEFAULTS` for a pooled screen.

Response example (examples/papalexi_learn.toml):

    name = "papalexi_learn"
    objective = "learn_response"
    initial = 4
    rounds = 4
    batch_size = 3

    [world]
    kind = "perturbseq"
    dataset = "papalexi2021"

    [design]
    features = ["go", "expression_pca"]

    [surrogate]
    kind = "ensemble"

    [acquisition]
    kind = "uncertainty"

    [evaluation]
    policies = ["uncertainty", "diversity", "random"]
    seeds = 10
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from perturbloop.errors import ConfigError


MAX_SEED = 2**32 - 1  # numpy's legacy seeding and most simulators take a 32-bit unsigned seed


class _Strict(BaseModel):
    """Unknown fields are refused; numbers and flags are taken as written: `rounds = true` or
    `batch_size = 2.5` is an error, not 1 or 2, and a float must be finite (`beta = inf` is refused).
    An int is accepted where a float is expected."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class DataConfig(_Strict):
    screen: str = Field(description="registry screen name, or path to a MAGeCK gene summary / Gene,Score CSV")
    hit_fraction: float = Field(0.05, gt=0, lt=1, description="hits = this top fraction of genes by |score|")
    nonessential: bool = Field(False, description="drop core-essential genes (CEGv2) from hits and picks")
    hit_threshold: float | None = Field(None, gt=0, description="a measured gene is a hit when |value| >= this "
                                        "(surrogate.target = 'hit_call'; default: the screen's top-fraction cut-off)")
    aggregate: Literal["error", "mean", "first"] | None = Field(
        None, description="rows of the screen file naming the same gene: error (refuse rows that disagree), mean or "
        "first (default: error for a file, the registry's declaration for a registry screen)")


ScreenFeature = Literal["go", "screens", "essential", "embedding", "string", "pathways", "hpo", "literature", "depmap",
                        "paralogs", "knowledge"]
SCREEN_FEATURES = get_args(ScreenFeature)
RESPONSE_KNOWLEDGE = ("string", "pathways", "hpo", "literature", "depmap", "paralogs", "knowledge", "gwt")
RESPONSE_FEATURES = ("go", "expression_pca", "none", *RESPONSE_KNOWLEDGE)  # gwt: perturbloop.response_knowledge


class DesignConfig(_Strict):
    space: Literal["genes", "pairs"] = "genes"
    features: list[Literal[ScreenFeature, "expression_pca", "gwt", "none"]] = Field(
        default_factory=lambda: ["go"],
        description="gene features: GO embedding, prior screens, core-essential flag, user embeddings, prior knowledge "
                    "(STRING network, pathways, HPO, literature, DepMap, paralogs; `knowledge` = all six) for screens; "
                    "GO embedding, the gene's loadings on the PCs of control-cell expression, the knowledge blocks "
                    "and gwt (CD4 T-cell / K562 perturbation effects, Zhu, Dann et al. 2025) (Perturb-seq, pairs)")
    prior_screens: list[str] | None = Field(None, description="screens used as features (default: all registry screens but the target)")
    genes: list[str] | str | None = Field(None, description="restrict the design space to these genes (a list, or a file with one gene per line)")
    go_dims: int = Field(64, ge=2, le=512)
    gaf: str | None = Field(None, description="a GO annotation file (GAF) to use instead of the data dir's gene_go table")
    embeddings: str | None = Field(None, description="CSV/NPY gene embeddings for feature 'embedding'")
    expression_pcs: int = Field(10, ge=1, le=100, description="feature expression_pca: PCs of control-cell expression")
    pooling: list[Literal["sum", "prod", "max"]] = Field(default_factory=lambda: ["sum", "prod"],
                                                       description="symmetric pooling of the two genes' features (pairs)")
    prior_rank: int = Field(8, ge=1, le=64, description="PCs of the single-gene responses used as pair features")
    max_pairs: int | None = Field(None, ge=1, description="pairs: at most this many candidate pairs (seeded subsample)")
    phenotype: str | None = Field(None, min_length=1, max_length=2000,
                                  description="the screen's phenotype in words, e.g. 'IL-2 secretion by primary human CD4 "
                                  "T cells after TCR stimulation': matched to GO / Reactome / Hallmark / HPO term names "
                                  "(perturbloop.phenotype_prior); the prior picks round 1 and is the feature phenotype_prior")
    prior_terms: list[str] = Field(default_factory=list, description="GO / Reactome / Hallmark / HPO terms (ids or names) "
                                   "whose genes the prior favours")
    known_positives: list[str] | str | None = Field(None, description="genes known to matter (a list, or a file with one "
                                                    "gene per line): the prior favours them and their STRING neighbours")
    prior_share: float = Field(1.0, gt=0, le=1, description="share of round 1 taken from the top of the phenotype prior; "
                               "the rest is drawn at random (a representative start for the model)")

    @property
    def has_prior(self) -> bool:
        """Whether a phenotype, prior terms or known positives are given (the phenotype prior is built)."""
        return bool(self.phenotype or self.prior_terms or self.known_positives)


ContextSurrogate = Literal["multitask", "multitask_icm", "independent", "pooled"]  # surrogates/context_model.py
SurrogateKind = Literal["gp", "mean", "ensemble", "linear", "additive", ContextSurrogate]
SCREEN_SURROGATES, CONTEXT_SURROGATES = ("gp", "mean"), get_args(ContextSurrogate)


class SurrogateConfig(_Strict):
    kind: SurrogateKind = Field("gp", description="screens: gp | mean; responses: ensemble | gp (low-rank) | linear | "
                                                  "mean | additive (pairs); contexts: multitask | multitask_icm (no "
                                                  "kernel over time) | independent | pooled")
    max_iter: int = Field(10, ge=1, le=10_000, description="L-BFGS-B iterations per hyperparameter fit (warm-started)")
    members: int = Field(5, ge=2, le=100, description="ensemble members")
    hidden: int = Field(64, ge=4, le=4096, description="ensemble: hidden units")
    layers: int = Field(2, ge=1, le=8, description="ensemble: hidden layers")
    epochs: int = Field(300, ge=1, le=100_000, description="ensemble: training epochs")
    rank: int = Field(16, ge=1, le=512, description="responses: output PCs modelled")
    prior_scale: float = Field(0.3, ge=0, description="ensemble random-prior scale")
    target_transform: Literal["none", "log"] = Field("none", description="log: model log(y + median y) (objective hits only)")
    target: Literal["value", "hit_call"] = Field("value", description="value: the objective's scalar (|score| for hits); "
                                                 "hit_call: 1 for a measured hit, else 0 (objective hits only)")
    network: bool = Field(False, description="screens, gp: add a STRING network kernel (low-rank diffusion over the "
                                             "network's genes) to the feature kernel; needs the 'string' features")
    network_kernel: Literal["diffusion", "regularized_laplacian"] = Field(
        "diffusion", description="network: exp(-t L) or (I + t L)^-1 on the Laplacian's smallest eigenpairs")

    def kwargs(self) -> dict:
        """Keyword arguments of a response surrogate of this kind (`surrogates.make_surrogate(kind, "response")`)."""
        if self.kind == "gp":
            return {"rank": min(self.rank, 8), "max_iter": self.max_iter}
        if self.kind == "linear":
            return {"rank": self.rank}
        if self.kind == "ensemble":
            return self.model_dump(include={"members", "hidden", "layers", "epochs", "rank", "prior_scale", "max_iter"})
        return {}

    @model_validator(mode="after")
    def _hit_call_untransformed(self) -> SurrogateConfig:
        if self.target == "hit_call" and self.target_transform != "none":
            raise ValueError("target 'hit_call' models 0/1 hit calls: set target_transform = 'none'")
        return self


ScreenPolicy = Literal["random", "greedy", "ucb", "qlognei", "thompson", "prob_hit", "coreset", "ucb_batch", "rl",
                       "rl_permuted"]  # rl_permuted: the RL policy's shuffled-feedback control (benchmarks)
ResponsePolicyKind = Literal["random", "uncertainty", "diversity", "coreset", "program"]  # diversity = coreset
# contexts: cost_aware (expected target hits per unit cost), random (random genes in the target), cheap_first (the
# cheapest other context first, e.g. K562, then the target on the strongest genes there); variance, random_pairs
# (goal matrix), specific, random_genes (goal specific): acquisition/context_policies.py
ContextPolicy = Literal["cost_aware", "random", "cheap_first", "variance", "random_pairs", "specific", "random_genes"]
SCREEN_POLICIES, RESPONSE_POLICIES, CONTEXT_POLICIES = map(get_args, (ScreenPolicy, ResponsePolicyKind, ContextPolicy))


class AcquisitionConfig(_Strict):
    kind: Literal[ScreenPolicy, ResponsePolicyKind, ContextPolicy] = "ucb"  # every policy, each once
    beta: float = Field(4.0, ge=0, description="UCB exploration weight: mu + sqrt(beta) sigma")
    policy_path: str | None = Field(None, description="kind 'rl': checkpoint from `perturbloop policy train`")
    program: list[str] | None = Field(None, description="program: genes whose mean LFC is the score")
    direction: Literal["up", "down"] = Field("up", description="program: drive the score up or down")
    interaction: bool = Field(False, description="program: score the deviation from the additive prior (pairs)")
    absolute: bool = Field(False, description="program: score |s| (strongest effect of either sign)")
    max_per_gene: int | None = Field(None, ge=1, description="pairs: at most this many picks per gene in a batch")

    @model_validator(mode="after")
    def _rl_needs_checkpoint(self) -> AcquisitionConfig:
        if self.kind in ("rl", "rl_permuted") and not self.policy_path:
            raise ValueError("kind 'rl' needs policy_path (a checkpoint from `perturbloop policy train`)")
        return self


_WORLD_DATASETS = {"perturbseq": "a dataset (registry name or .h5ad path)",
                   "pair_screen": "its pair screen file",
                   "contexts": "a multi-context screen (gwt_cd4_polarization, gwt_cd4_aging, or a file)"}


class WorldConfig(_Strict):
    """What answers the experiments (simulated: replayed real data or a labelled synthetic world)."""

    kind: Literal["perturbseq", "synthetic_grn", "pair_fitness", "pair_screen", "contexts"] = Field(
        description="perturbseq: replay held-out cells of a Perturb-seq AnnData; synthetic_grn: a synthetic "
                    "gene-regulatory world with known interactions; pair_fitness: replay a pair screen (Norman 2019); "
                    "pair_screen: replay a pair screen file (gene_a,gene_b,score or A+B,score); contexts: replay a "
                    "multi-context screen (perturbloop.contexts; the campaign's [contexts] table)")
    dataset: str | None = Field(None, description="perturbseq: registry name or .h5ad path; pair_fitness: registry "
                                "name; pair_screen: the pair screen file; contexts: gwt_cd4_polarization (activation; "
                                "gwt_cd4_polarization/ota), gwt_cd4_aging, or a multi-context screen file")
    key: str = Field("perturbation", description="obs column with perturbation labels")
    control: str = Field("ctrl", description="control label in obs[key]")
    cells_per_run: int = Field(50, ge=1, le=100_000, description="cells a run of one perturbation returns")
    failure_rate: float = Field(0.0, ge=0, lt=1, description="probability that one run fails")
    min_cells: int = Field(20, ge=1, description="perturbations with fewer cells in the data are not offered")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the world's draws (cells, failures, synthetic network)")
    params: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments of the simulator")
    readout: Literal["fitness", "gi"] = Field("fitness", description="pair_fitness: the pair phenotype modelled")
    hits: str | None = Field(None, description="pair_screen: file of hit pairs, one A+B a line; contexts: file of "
                             "hit genes in the target, one a line (default: top "
                             "evaluation.hit_fraction by |score|)")

    @model_validator(mode="after")
    def _dataset_needed(self) -> WorldConfig:
        if self.kind in _WORLD_DATASETS and not self.dataset:
            raise ValueError(f"world.dataset: a {self.kind} world needs {_WORLD_DATASETS[self.kind]}")
        if self.hits and self.kind not in ("pair_screen", "contexts"):
            raise ValueError("world.hits: a hits file applies to a pair_screen or contexts world")
        return self


class EvaluationConfig(_Strict):
    seeds: int = Field(5, ge=1, le=1000)
    test_fraction: float = Field(0.3, gt=0, lt=1, description="held-out perturbations (never run), drawn per seed")
    max_test: int | None = Field(None, ge=1, description="at most this many held-out perturbations")
    policies: list[ResponsePolicyKind] = Field(default_factory=lambda: ["uncertainty", "random"])
    baselines: list[SurrogateKind] = Field(
        default_factory=lambda: ["mean", "linear"],
        description="fitted on the same observations every round and scored beside the model (pairs add 'additive')")
    top_de: int = Field(20, ge=1)
    top_expressed: int = Field(1000, ge=1)
    de_method: Literal["abs_lfc", "t-test"] = Field("t-test", description="how the top DE genes of the truth are ranked")
    hit_fraction: float = Field(0.05, gt=0, lt=1, description="maximize: hits = this top fraction of the score")


_LAB_FIELDS = {"filedrop": ("outbox", "inbox"), "http": ("url", "token_env", "timeout", "retries")}


class LabConfig(_Strict):
    """Which lab runs the batches: the simulator (replays the screen), a file drop, or a lab's REST API.

    A lab token is never written in the config: `token_env` names the environment variable that holds it.
    """

    kind: Literal["simulator", "filedrop", "http"] = "simulator"
    noise: Literal["none", "donor"] = Field("none", description="simulator readout: screen mean, or one donor per gene")
    outbox: str | None = Field(None, description="filedrop: folder the order sheets are written to")
    inbox: str | None = Field(None, description="filedrop: folder the lab puts results files in")
    url: str | None = Field(None, pattern=r"^https?://\S+$", description="http: the lab API's base URL")
    token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                  description="http: name of the environment variable holding the lab's bearer token")
    timeout: float = Field(30.0, gt=0, le=3600, description="http: seconds per request")
    retries: int = Field(3, ge=0, le=20, description="http: retries on connection errors, timeouts and 5xx")

    @model_validator(mode="before")
    @classmethod
    def _no_inline_token(cls, data: object) -> object:
        if isinstance(data, dict) and "token" in data:
            raise ValueError("lab.token: do not put the token in the config; put it in an environment variable "
                             "and name that variable in lab.token_env")
        return data

    @model_validator(mode="after")
    def _fields_for_kind(self) -> LabConfig:
        needed = {"filedrop": ("outbox", "inbox"), "http": ("url",)}.get(self.kind, ())
        missing = [f"lab.{f}" for f in needed if getattr(self, f) is None]
        if missing:
            raise ValueError(f"lab.kind = {self.kind!r} needs {' and '.join(missing)}")
        # a field of another kind set to something other than its default (a dumped config carries the defaults)
        stray = [f"lab.{f}" for k, fields in _LAB_FIELDS.items() if k != self.kind for f in fields
                 if getattr(self, f) != type(self).model_fields[f].default]
        if stray:
            raise ValueError(f"{', '.join(stray)} not used with lab.kind = {self.kind!r}")
        return self


RESPONSE_DEFAULTS: dict[str, Any] = {
    "objective": "learn_response", "initial": 10, "batch_size": 10,
    "design": {"features": ["go", "expression_pca"], "go_dims": 16},
    "surrogate": {"kind": "ensemble", "max_iter": 75},
    "acquisition": {"kind": "uncertainty", "beta": 1.0},
}


SCREEN_DEFAULTS: dict[str, Any] = {
    # chosen by leave-one-screen-out over the six registry screens with no prior screens (benchmarks/loso.py,
    # benchmarks/RESULTS.md; it picks go + knowledge with greedy for every held-out screen): with greedy, GO + the
    # knowledge blocks beat GO alone on 5 of 6 screens, and greedy beats UCB (beta 4) on 5 of 6 with either features
    "design": {"features": ["go", "knowledge"]},
    "acquisition": {"kind": "greedy"},
}


def _ucb_named(data: dict) -> dict:
    """A pooled-screen table whose `acquisition.beta` (a UCB weight) names its policy when no kind is given."""
    acq = data.get("acquisition")
    if isinstance(acq, dict) and "beta" in acq and "kind" not in acq:
        return {**data, "acquisition": {**acq, "kind": "ucb"}}
    return data


def _leaf_paths(table: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    return [q for k, v in table.items() for q in (_leaf_paths(v, (*prefix, k)) if isinstance(v, dict) else [(*prefix, k)])]


def _lookup(table: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for key in path:
        if not isinstance(table, dict) or key not in table:
            return False, None
        table = table[key]
    return True, table


CONTEXTS_DEFAULTS: dict[str, Any] = {
    "objective": "hits", "initial": 8, "batch_size": 1,  # a round spends cost units, not a batch size
    "design": {"features": ["go"], "go_dims": 16},
    "surrogate": {"kind": "multitask", "max_iter": 15},
    "acquisition": {"kind": "cost_aware"},
}


def _with_defaults(data: dict, defaults: dict) -> dict:
    """`data` with `defaults` filled in where a key (or a key of a sub-table) is not given."""
    out = dict(data)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _with_defaults(out[k], v)
    return out


class CampaignConfig(_Strict):
    """One campaign: what to discover or learn, in how many rounds of which size, with which model, policy,
    lab and approval step (see module docstring)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    objective: Literal["hits", "maximize", "learn_response"] = "hits"
    initial: int | None = Field(None, ge=1, le=1_000_000,
                                description="responses: perturbations run (random) before the first model fit")
    rounds: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=100_000)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds the policy, the simulated lab and the initial design")
    approval: Literal["auto", "required"] = "auto"
    schedule: str | None = Field(None, description="cron schedule for `perturbloop serve` (default: the --cron option)")
    data: DataConfig | None = Field(None, description="the pooled screen (one readout per gene)")
    world: WorldConfig | None = Field(None, description="what answers a response campaign's experiments")
    design: DesignConfig = Field(default_factory=DesignConfig)
    surrogate: SurrogateConfig = Field(default_factory=SurrogateConfig)
    acquisition: AcquisitionConfig = Field(default_factory=AcquisitionConfig)
    lab: LabConfig = Field(default_factory=LabConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    contexts: ContextsTable | None = Field(None, description="a campaign across contexts (world.kind = 'contexts'): "
                                           "contexts, costs, hours, target, budget, allowed contexts")
    _unset: tuple[tuple[str, ...], ...] = PrivateAttr(default=())  # SCREEN_DEFAULTS paths the file leaves unset

    def __eq__(self, other: object) -> bool:  # the record of unset fields is not part of what the config says
        return isinstance(other, CampaignConfig) and self.__dict__ == other.__dict__

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        if data.get("world") is None:
            return _with_defaults(_ucb_named(data), SCREEN_DEFAULTS)
        contexts = isinstance(data["world"], dict) and data["world"].get("kind") == "contexts"
        return _with_defaults(data, CONTEXTS_DEFAULTS if contexts else RESPONSE_DEFAULTS)

    @property
    def is_response(self) -> bool:
        """A response campaign (a `[world]`: Perturb-seq, pairs, contexts), not a pooled screen."""
        return self.world is not None

    @property
    def is_contexts(self) -> bool:
        """A campaign across contexts: (gene, context) pairs, labelled `GENE@@context`, within a cost budget."""
        return self.world is not None and self.world.kind == "contexts"

    def file_fields(self, *, datasets: bool = False) -> dict[str, str]:
        """The fields that name a file, `field -> path as written`: design.genes and design.known_positives (when
        not a list), design.gaf, design.embeddings, acquisition.policy_path; `datasets` adds data.screen and
        world.dataset, which may also be registry names."""
        d = self.design
        named = {"data.screen": datasets and self.data and self.data.screen,
                 "design.genes": d.genes if isinstance(d.genes, str) else None, "design.gaf": d.gaf,
                 "design.embeddings": d.embeddings,
                 "design.known_positives": d.known_positives if isinstance(d.known_positives, str) else None,
                 "world.dataset": datasets and self.world and self.world.dataset,
                 "acquisition.policy_path": self.acquisition.policy_path}
        return {k: v for k, v in named.items() if v}

    def named_files(self) -> dict[str, tuple[str, str]]:
        """Every existing file the config names, `field -> (path, sha256 of its content)` (registry names and
        other values that are not files are left out)."""
        import hashlib

        out: dict[str, tuple[str, str]] = {}
        for field, value in self.file_fields(datasets=True).items():
            path = Path(value).expanduser()
            if path.is_file():
                with path.open("rb") as f:
                    out[field] = (str(path.resolve()), hashlib.file_digest(f, "sha256").hexdigest())
        return out

    @property
    def prediction_label(self) -> str:
        """What a proposal's `predicted` column holds, in the units a scientist reads."""
        if self.is_contexts:
            return "predicted score in the proposed context +- sd"
        if not self.is_response:
            what = "hit call (probability)" if self.surrogate.target == "hit_call" else (
                "|score|" if self.objective == "hits" else "score")
            return f"predicted {what} +- sd"
        a = self.acquisition
        if self.objective == "learn_response" or a.kind != "program":
            return "predicted response size (L2 norm of the LFC over the readout genes) +- sd"
        if self.world.kind == "pair_fitness":
            gi = self.world.readout == "gi" or a.interaction or a.absolute
            return ("predicted |GI| +- sd" if a.absolute else "predicted GI +- sd") if gi else "predicted fitness +- sd"
        if self.world.kind == "pair_screen":
            return "predicted |score| +- sd" if a.absolute else "predicted score +- sd"
        sign = "mean LFC of the program genes" + (" (up)" if a.direction == "up" else " (down)")
        return f"predicted program score: {sign} +- sd"

    @model_validator(mode="after")
    def _consistent(self) -> CampaignConfig:
        if self.contexts is not None and not self.is_contexts:
            raise ValueError("contexts: a [contexts] table needs world.kind = 'contexts'")
        if self.is_contexts:
            self._check_contexts()
        elif self.is_response:
            self._check_response()
        else:
            self._check_screen()
        return self

    def _check_contexts(self) -> None:
        if self.contexts is None:
            raise ValueError("contexts: a contexts world needs a [contexts] table (contexts, costs, target, budget)")
        if self.data is not None:
            raise ValueError("data: a contexts campaign's experiments are answered by its [world]; remove [data]")
        if self.objective != "hits":
            raise ValueError("objective: a contexts campaign finds hits in its target context (objective = 'hits')")
        _only("design.features", self.design.features, ("go",))
        _only("surrogate.kind", [self.surrogate.kind], CONTEXT_SURROGATES)
        _only("acquisition.kind", [self.acquisition.kind], CONTEXT_POLICIES)
        if self.design.space != "genes" or self.design.has_prior:
            raise ValueError("design: a contexts campaign designs (gene, context) pairs over the screen's genes "
                             "(design.space = 'genes', no phenotype prior)")
        if self.surrogate.target != "value" or self.surrogate.target_transform != "none" or self.surrogate.network:
            raise ValueError("surrogate.target / target_transform / network apply to pooled screens only")
        initial, budget = self.initial or 0, self.contexts.budget
        initial_cost = initial * sum(c.cost for c in self.contexts.context_list())
        if initial_cost > budget:
            raise ValueError(f"initial: the initial design ({initial} genes in every context) costs {initial_cost:g}, "
                             f"more than the budget {budget:g}")

    def _check_screen(self) -> None:
        if self.data is None:
            raise ValueError("data: required field is missing (a pooled-screen campaign names its screen in [data]; "
                             "a Perturb-seq or pair campaign names its [world])")
        if self.objective == "learn_response":
            raise ValueError("objective 'learn_response' needs a [world] (Perturb-seq or pairs)")
        if self.design.space != "genes":
            raise ValueError("design.space: pooled-screen campaigns design single genes: set design.space = 'genes'")
        _only("design.features", self.design.features, SCREEN_FEATURES)
        _only("surrogate.kind", [self.surrogate.kind], SCREEN_SURROGATES)
        _only("acquisition.kind", [self.acquisition.kind], SCREEN_POLICIES)
        if self.surrogate.target_transform == "log" and self.objective != "hits":
            raise ValueError("surrogate.target_transform = 'log' needs objective = 'hits' (non-negative targets)")
        if self.surrogate.network and self.surrogate.kind != "gp":
            raise ValueError("surrogate.network: the network kernel is a GP kernel; set surrogate.kind = 'gp'")
        if self.surrogate.network and not {"string", "knowledge"} & set(self.design.features):
            raise ValueError("surrogate.network reads each gene's place in STRING from its 'string' features: "
                             "add 'string' (or 'knowledge') to design.features")

    def _check_response(self) -> None:
        if self.data is not None:
            raise ValueError("data: a response campaign's experiments are answered by its [world]; remove [data]")
        if self.objective == "hits":
            raise ValueError("objective 'hits' is for pooled screens; a response campaign learns (learn_response) "
                             "or drives (maximize) the response")
        _only("design.features", self.design.features, RESPONSE_FEATURES)
        _only("acquisition.kind", [self.acquisition.kind], RESPONSE_POLICIES)
        if self.design.has_prior:
            raise ValueError("design.phenotype / prior_terms / known_positives apply to pooled screens only")
        if self.surrogate.target != "value" or self.surrogate.target_transform != "none" or self.surrogate.network:
            raise ValueError("surrogate.target / target_transform / network apply to pooled screens only")
        if self.objective == "maximize" and self.acquisition.kind != "program" and "program" not in self.evaluation.policies:
            raise ValueError("objective 'maximize' needs acquisition.kind = 'program' (or 'program' among evaluation.policies)")
        uses_program = self.acquisition.kind == "program" or "program" in self.evaluation.policies
        if uses_program and not self.acquisition.program and self.world.kind not in ("pair_fitness", "pair_screen"):
            raise ValueError("acquisition.program: list the program's genes (policy 'program')")
        if self.surrogate.kind in CONTEXT_SURROGATES or (self.acquisition.kind in CONTEXT_POLICIES and
                                                            self.acquisition.kind != "random"):
            raise ValueError(f"surrogate.kind / acquisition.kind: {self.surrogate.kind!r} / {self.acquisition.kind!r} "
                             "need world.kind = 'contexts'")
        if self.world.kind in ("pair_fitness", "pair_screen") and self.design.space != "pairs":
            raise ValueError(f"design.space: a {self.world.kind} world designs pairs (set design.space = 'pairs')")
        if self.surrogate.kind == "additive" and self.design.space != "pairs":
            raise ValueError("surrogate.kind = 'additive' applies to pairs only")


def _only(field: str, values: list[str], allowed: tuple[str, ...]) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{field}: {', '.join(map(repr, bad))} is not available for this kind of campaign; "
                         f"choose from {', '.join(allowed)}")


_MESSAGES = {"extra_forbidden": "unknown field", "missing": "required field is missing"}
_SHOW_INPUT = {"int_type", "bool_type", "float_type", "finite_number", "greater_than_equal", "less_than_equal",
               "greater_than", "less_than", "string_type"}


def _toml_repr(value: object) -> str:
    """A value as it was written in the TOML file (`true`, `inf`, 2.5, "text"; a float's repr is its TOML)."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def format_validation_error(e: ValidationError, source: str = "config") -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = _MESSAGES.get(err["type"], err["msg"])
        if err["type"] in _SHOW_INPUT:
            msg = f"{msg} (got {_toml_repr(err['input'])})"
        lines.append(f"  {loc}: {msg}")
    return f"invalid {source}:\n" + "\n".join(lines)


def parse_config(data: dict, source: str = "config") -> CampaignConfig:
    try:
        config = CampaignConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    if not config.is_response and isinstance(data, dict):
        given = _ucb_named(data)
        config._unset = tuple(p for p in _leaf_paths(SCREEN_DEFAULTS) if not _lookup(given, p)[0])
    return config


def with_campaign_defaults(config: CampaignConfig, stored: dict) -> CampaignConfig:
    """`config` with each field its file leaves to `SCREEN_DEFAULTS` taken from the campaign's stored config
    (`stored`, in today's format): a campaign keeps the defaults it started with when the defaults change
    (go + ucb until the leave-one-screen-out choice of go + knowledge + greedy)."""
    data, changed = config.model_dump(mode="json"), False
    for path in config._unset:
        found, value = _lookup(stored, path)
        if found and _lookup(data, path)[1] != value:
            *parents, leaf = path
            _lookup(data, tuple(parents))[1][leaf] = value
            changed = True
    return parse_config(data, "config with the campaign's stored defaults") if changed else config


def read_toml(path: str | Path) -> dict:
    """A config file's TOML table; a missing file or bad TOML is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.object[e.start:e.start + 1]!r} at offset {e.start}); "
                          "a config is TOML text saved as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def check_named_files(config: CampaignConfig, source: str = "config") -> None:
    """A ConfigError naming each field whose file does not exist (paths relative to the working directory)."""
    missing = [f"  {field}: file {path!r} does not exist" for field, path in config.file_fields().items()
               if not Path(path).expanduser().is_file()]
    if missing:
        raise ConfigError(f"invalid {source}:\n" + "\n".join(missing))


def load_config(path: str | Path) -> CampaignConfig:
    """The config in a TOML file, validated, every file it names checked to exist."""
    config = parse_config(read_toml(path), str(path))
    check_named_files(config, str(path))
    return config


def stored_config_as_today(stored: dict) -> dict:
    """A config stored by an earlier version, in today's format: validated by today's model (fields added since
    take their defaults), dumped again. Raises a ConfigError when today's model cannot read it."""
    return parse_config(stored, "stored config").model_dump(mode="json")


class ContextsTable(_Strict):
    """The `[contexts]` table of a campaign across contexts (issue 12): the contexts, their cost per perturbation
    and hours since stimulation, the target context whose hits count, the budget in cost units, the contexts rounds
    may use. The world (`world.kind = "contexts"`) replays a multi-context screen that has these contexts."""

    contexts: list[str] = Field(min_length=1, description="context names (cell types, conditions, timepoints)")
    costs: list[float] | None = Field(None, description="cost per perturbation in each context (default 1 each)")
    hours: dict[str, float] = Field(default_factory=dict, description="hours since stimulation of the timepoints "
                                    "(default: Rest 0, Stim8hr 8, Stim48hr 48)")
    target: str = Field(description="the context whose hits count")
    budget: float = Field(gt=0, description="cost units the whole campaign may spend (initial design included)")
    allowed: list[str] | None = Field(None, description="contexts rounds may use (default all)")
    hit_fraction: float = Field(0.05, gt=0, lt=1, description="hits = this top fraction by |score| in the target")
    goal: Literal["hits", "matrix", "specific"] = Field(
        "hits", description="what the simulated campaign is scored on (perturbloop.context_objectives): hits = target "
        "hits found; matrix = held-out error of the gene x context matrix after each round; specific = "
        "context-specific genes found (strong in one context, weak in another)")
    test_genes: int = Field(90, ge=3, le=100_000, description="goal matrix: genes with one context held out (never "
                            "offered; contexts cycled), their other contexts known (measured free) from the start")
    variants: list[str] | None = Field(None, description="`perturbloop benchmark --config`: the variants compared "
                                       "(agent.benchmark.CONTEXT_VARIANTS of the goal; default the goal's standard set)")

    @model_validator(mode="after")
    def _consistent_contexts(self) -> ContextsTable:
        names = [c.strip() for c in self.contexts]
        if self.target not in names:
            raise ValueError(f"target {self.target!r} is not among the contexts {', '.join(names)}")
        unknown = [a for a in self.allowed or [] if a not in names]
        if unknown:
            raise ValueError(f"allowed: unknown context(s) {', '.join(unknown)}; contexts are {', '.join(names)}")
        # a ConfigError (a ValueError) from `context_list` becomes a validation error naming its field
        cheapest = min(c.cost for c in self.context_list() if self.allowed is None or c.name in self.allowed)
        if self.budget < cheapest:
            raise ValueError(f"budget {self.budget:g} is smaller than one perturbation's cost ({cheapest:g})")
        return self

    def context_list(self):
        """The `perturbloop.contexts.Context` of each name, in order."""
        from perturbloop.contexts import GWT_HOURS, context_list

        return context_list(self.contexts, self.costs, {**GWT_HOURS, **self.hours})
