"""Campaign configuration (TOML), validated by pydantic; a bad field is an error that names it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from perturbloop.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    screen: str = Field(description="registry screen name, or path to a MAGeCK gene summary / Gene,Score CSV")
    hit_fraction: float = Field(0.05, gt=0, lt=1, description="hits = this top fraction of genes by |score|")
    nonessential: bool = Field(False, description="drop core-essential genes (CEGv2) from hits and picks")
    hit_threshold: float | None = Field(None, gt=0, description="a measured gene is a hit when |value| >= this "
                                        "(surrogate.target = 'hit_call'; default: the screen's top-fraction cut-off)")


class DesignConfig(_Strict):
    space: Literal["genes", "pairs"] = "genes"
    features: list[Literal["go", "screens", "essential", "embedding", "string", "pathways", "hpo", "literature", "depmap", "paralogs", "knowledge"]] = Field(default_factory=lambda: ["go"])
    prior_screens: list[str] | None = Field(None, description="screens used as features (default: all registry screens but the target)")
    genes: list[str] | str | None = Field(None, description="restrict the design space to these genes (a list, or a file with one gene per line)")
    go_dims: int = Field(64, ge=2, le=512)
    gaf: str | None = Field(None, description="a GO annotation file (GAF) to use instead of the data dir's gene_go table")
    embeddings: str | None = Field(None, description="CSV/NPY gene embeddings for feature 'embedding'")


class SurrogateConfig(_Strict):
    kind: Literal["gp", "mean"] = "gp"
    max_iter: int = Field(10, ge=1, le=10_000, description="L-BFGS-B iterations per hyperparameter fit (warm-started)")
    target_transform: Literal["none", "log"] = Field("none", description="log: model log(y + median y) (objective hits only)")
    target: Literal["value", "hit_call"] = Field("value", description="value: the objective's scalar (|score| for hits); "
                                                 "hit_call: 1 for a measured hit, else 0 (objective hits only)")

    @model_validator(mode="after")
    def _hit_call_untransformed(self) -> SurrogateConfig:
        if self.target == "hit_call" and self.target_transform != "none":
            raise ValueError("target 'hit_call' models 0/1 hit calls: set target_transform = 'none'")
        return self


class AcquisitionConfig(_Strict):
    kind: Literal["random", "greedy", "ucb", "qlognei", "thompson", "prob_hit", "coreset", "ucb_batch", "rl"] = "ucb"
    beta: float = Field(4.0, ge=0, description="UCB exploration weight: mu + sqrt(beta) sigma")
    policy_path: str | None = Field(None, description="kind 'rl': checkpoint from `perturbloop policy train`")

    @model_validator(mode="after")
    def _rl_needs_checkpoint(self) -> AcquisitionConfig:
        if self.kind == "rl" and not self.policy_path:
            raise ValueError("kind 'rl' needs policy_path (a checkpoint from `perturbloop policy train`)")
        return self


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


class CampaignConfig(_Strict):
    """One campaign: what to discover, in how many rounds of which size, with which model and policy."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    objective: Literal["hits", "maximize"] = "hits"
    rounds: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=100_000)
    seed: int = 0
    approval: Literal["auto", "required"] = "auto"
    schedule: str | None = Field(None, description="cron schedule for `perturbloop serve` (default: the --cron option)")
    data: DataConfig
    design: DesignConfig = Field(default_factory=DesignConfig)
    surrogate: SurrogateConfig = Field(default_factory=SurrogateConfig)
    acquisition: AcquisitionConfig = Field(default_factory=AcquisitionConfig)
    lab: LabConfig = Field(default_factory=LabConfig)

    @model_validator(mode="after")
    def _log_needs_hits(self) -> CampaignConfig:
        if self.surrogate.target_transform == "log" and self.objective != "hits":
            raise ValueError("surrogate.target_transform = 'log' needs objective = 'hits' (non-negative targets)")
        return self

    @field_validator("design")
    @classmethod
    def _genes_only(cls, v: DesignConfig) -> DesignConfig:
        if v.space != "genes":
            raise ValueError("pooled-screen campaigns design single genes: set design.space = 'genes'")
        return v


def format_validation_error(e: ValidationError, source: str = "config") -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  {loc}: {msg}")
    return f"invalid {source}:\n" + "\n".join(lines)


def parse_config(data: dict, source: str = "config") -> CampaignConfig:
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def read_toml(path: str | Path) -> dict:
    """A config file's TOML table; a missing file or bad TOML is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def load_config(path: str | Path) -> CampaignConfig:
    return parse_config(read_toml(path), str(path))
