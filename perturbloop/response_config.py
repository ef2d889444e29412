"""Response-campaign configuration (TOML), validated by pydantic: Perturb-seq and pair campaigns.

A response campaign learns (objective `learn_response`) or drives (objective `maximize`) the
response of perturbations: a transcriptome LFC vector (Perturb-seq) or a scalar pair phenotype
(pair fitness). The file has the campaign fields at the top (as a screen campaign), a `[world]`
that answers experiments, the `[design]` space, the `[surrogate]`, the `[acquisition]` policy and,
for `perturbloop benchmark --config`, an `[evaluation]` (held-out perturbations, seeds, policies
compared, baselines reported). A bad field is an error that names it.

Example (examples/papalexi_learn.toml):

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

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from perturbloop.config import format_validation_error, read_toml
from perturbloop.errors import ConfigError

ResponsePolicyKind = Literal["random", "uncertainty", "diversity", "program"]
ResponseSurrogateKind = Literal["ensemble", "gp", "linear", "mean", "additive"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorldConfig(_Strict):
    """What answers the experiments (simulated: replayed real data or a labelled synthetic world)."""

    kind: Literal["perturbseq", "synthetic_grn", "pair_fitness"] = Field(
        description="perturbseq: replay held-out cells of a Perturb-seq AnnData; synthetic_grn: a synthetic "
                    "gene-regulatory world with known interactions; pair_fitness: replay a pair screen (Norman 2019)")
    dataset: str | None = Field(None, description="perturbseq: registry name or .h5ad path; pair_fitness: registry name")
    key: str = Field("perturbation", description="obs column with perturbation labels")
    control: str = Field("ctrl", description="control label in obs[key]")
    cells_per_run: int = Field(50, ge=1, le=100_000, description="cells a run of one perturbation returns")
    failure_rate: float = Field(0.0, ge=0, lt=1, description="probability that one run fails")
    min_cells: int = Field(20, ge=1, description="perturbations with fewer cells in the data are not offered")
    seed: int = Field(0, description="seed of the world's draws (cells, failures, synthetic network)")
    params: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments of the simulator")
    readout: Literal["fitness", "gi"] = Field("fitness", description="pair_fitness: the pair phenotype modelled")

    @model_validator(mode="after")
    def _dataset_needed(self) -> WorldConfig:
        if self.kind == "perturbseq" and not self.dataset:
            raise ValueError("world.dataset: a perturbseq world needs a dataset (registry name or .h5ad path)")
        return self


class ResponseDesignConfig(_Strict):
    space: Literal["genes", "pairs"] = "genes"
    features: list[Literal["go", "expression_pca", "none"]] = Field(
        default_factory=lambda: ["go", "expression_pca"],
        description="gene features: GO embedding, the gene's loadings on the PCs of control-cell expression")
    go_dims: int = Field(16, ge=2, le=512)
    expression_pcs: int = Field(10, ge=1, le=100)
    pooling: list[Literal["sum", "prod", "max"]] = Field(default_factory=lambda: ["sum", "prod"],
                                                       description="symmetric pooling of the two genes' features (pairs)")
    prior_rank: int = Field(8, ge=1, le=64, description="PCs of the single-gene responses used as pair features")
    genes: list[str] | None = Field(None, description="restrict the perturbable genes to these")
    max_pairs: int | None = Field(None, ge=1, description="pairs: at most this many candidate pairs (seeded subsample)")


class ResponseSurrogateConfig(_Strict):
    kind: ResponseSurrogateKind = "ensemble"
    members: int = Field(5, ge=2, le=100, description="ensemble members")
    hidden: int = Field(64, ge=4, le=4096)
    layers: int = Field(2, ge=1, le=8)
    epochs: int = Field(300, ge=1, le=100_000)
    rank: int = Field(16, ge=1, le=512, description="output PCs modelled")
    prior_scale: float = Field(0.3, ge=0, description="ensemble random-prior scale")
    max_iter: int = Field(75, ge=1, le=10_000, description="GP: L-BFGS-B iterations per fit")

    def kwargs(self) -> dict:
        d = self.model_dump(exclude={"kind"})
        if self.kind == "gp":
            return {"rank": min(self.rank, 8), "max_iter": self.max_iter}
        return d


class ResponseAcquisitionConfig(_Strict):
    kind: ResponsePolicyKind = "uncertainty"
    beta: float = Field(1.0, ge=0, description="program: UCB weight, mu + sqrt(beta) sigma")
    program: list[str] | None = Field(None, description="program: genes whose mean LFC is the score")
    direction: Literal["up", "down"] = Field("up", description="program: drive the score up or down")
    interaction: bool = Field(False, description="program: score the deviation from the additive prior (pairs)")
    absolute: bool = Field(False, description="program: score |s| (strongest effect of either sign)")
    max_per_gene: int | None = Field(None, ge=1, description="pairs: at most this many picks per gene in a batch")


class EvaluationConfig(_Strict):
    seeds: int = Field(5, ge=1, le=1000)
    test_fraction: float = Field(0.3, gt=0, lt=1, description="held-out perturbations (never run), drawn per seed")
    max_test: int | None = Field(None, ge=1, description="at most this many held-out perturbations")
    policies: list[ResponsePolicyKind] = Field(default_factory=lambda: ["uncertainty", "random"])
    baselines: list[ResponseSurrogateKind] = Field(
        default_factory=lambda: ["mean", "linear"],
        description="fitted on the same observations every round and scored beside the model (pairs add 'additive')")
    top_de: int = Field(20, ge=1)
    top_expressed: int = Field(1000, ge=1)
    de_method: Literal["abs_lfc", "t-test"] = Field("t-test", description="how the top DE genes of the truth are ranked")
    hit_fraction: float = Field(0.05, gt=0, lt=1, description="maximize: hits = this top fraction of the score")


class ResponseCampaignConfig(_Strict):
    """A response campaign (see module docstring)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    objective: Literal["learn_response", "maximize"] = "learn_response"
    initial: int = Field(10, ge=1, le=1_000_000, description="perturbations run before the first model fit (random)")
    rounds: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(10, ge=1, le=100_000)
    seed: int = 0
    world: WorldConfig
    design: ResponseDesignConfig = Field(default_factory=ResponseDesignConfig)
    surrogate: ResponseSurrogateConfig = Field(default_factory=ResponseSurrogateConfig)
    acquisition: ResponseAcquisitionConfig = Field(default_factory=ResponseAcquisitionConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _consistent(self) -> ResponseCampaignConfig:
        if self.objective == "maximize" and self.acquisition.kind != "program" and "program" not in self.evaluation.policies:
            raise ValueError("objective 'maximize' needs acquisition.kind = 'program' (or 'program' among evaluation.policies)")
        uses_program = self.acquisition.kind == "program" or "program" in self.evaluation.policies
        if uses_program and not self.acquisition.program and self.world.kind != "pair_fitness":
            raise ValueError("acquisition.program: list the program's genes (policy 'program')")
        if self.world.kind in ("pair_fitness",) and self.design.space != "pairs":
            raise ValueError("design.space: a pair_fitness world designs pairs (set design.space = 'pairs')")
        if self.surrogate.kind == "additive" and self.design.space != "pairs":
            raise ValueError("surrogate.kind = 'additive' applies to pairs only")
        return self


def parse_response_config(data: dict, source: str = "config") -> ResponseCampaignConfig:
    try:
        return ResponseCampaignConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def is_response_config(data: dict) -> bool:
    """A response campaign has a `[world]` table or objective `learn_response`."""
    return "world" in data or data.get("objective") == "learn_response"


def load_response_config(path: str | Path) -> ResponseCampaignConfig:
    data = read_toml(path)
    if not is_response_config(data):
        raise ConfigError(f"{path}: not a response campaign (needs a [world] table; screen campaigns are benchmarked "
                          "with --screen)")
    return parse_response_config(data, str(path))


def load_campaign_config(path: str | Path):
    """A campaign config of either kind: a `ResponseCampaignConfig` when the file has a `[world]`
    table (or objective `learn_response`), else a screen campaign's `CampaignConfig`."""
    from perturbloop.config import parse_config

    data = read_toml(path)
    if is_response_config(data):
        return parse_response_config(data, str(path))
    return parse_config(data, str(path))
