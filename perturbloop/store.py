"""The campaign store: SQLModel tables and a small repository API.

The store, not memory, is the source of truth. Every write that belongs to one step of a
round happens in one transaction, so a killed process leaves either the whole step or none
of it; every step checks the store first and is a no-op when its work is already there.

Tables: Campaign, Round, Proposal, Decision, LabJob, Observation, ResponseVector, ModelFit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from perturbloop.errors import StoreError

DEFAULT_STORE = "runs/perturbloop.db"


def _now() -> datetime:
    return datetime.now(UTC)


class Campaign(SQLModel, table=True):
    id: str = Field(primary_key=True)
    config: dict = Field(sa_column=Column(JSON, nullable=False))
    status: str = "running"  # running | awaiting_approval | finished
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class Round(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("campaign_id", "index"),)
    id: int | None = Field(default=None, primary_key=True)
    campaign_id: str = Field(foreign_key="campaign.id", index=True)
    index: int
    status: str = "fitting"  # fitting | proposed | approved | rejected | dispatched | collected | ingested
    created_at: datetime = Field(default_factory=_now)
    finished_at: datetime | None = None


class Proposal(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("round_id", "perturbation"),)
    id: int | None = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="round.id", index=True)
    rank: int
    perturbation: str
    policy: str
    mean: float | None = None
    sd: float | None = None
    acq_value: float | None = None
    rationale: str = ""


class Decision(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="round.id", index=True, unique=True)
    action: str  # auto | approved | edited | rejected
    by: str = "auto"
    at: datetime = Field(default_factory=_now)
    note: str = ""
    added: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    dropped: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    final: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class LabJob(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="round.id", index=True)
    adapter: str
    idempotency_key: str = Field(unique=True)
    external_id: str | None = None
    status: str = "submitting"  # submitting | submitted | partial (some results in) | collected | failed
    perturbations: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    submitted_at: datetime | None = None
    collected_at: datetime | None = None


class Observation(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("campaign_id", "perturbation"),)
    id: int | None = Field(default=None, primary_key=True)
    campaign_id: str = Field(foreign_key="campaign.id", index=True)
    round_id: int = Field(foreign_key="round.id", index=True)
    perturbation: str
    value: float | None = None
    replicates: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    failed: bool = False
    error: str | None = None
    hit: bool | None = None


class ResponseVector(SQLModel, table=True):
    """A response campaign's measured response of one perturbation (e.g. pseudobulk LFC over the
    readout genes, in the campaign's readout order); its Observation holds the magnitude."""

    __table_args__ = (UniqueConstraint("campaign_id", "perturbation"),)
    id: int | None = Field(default=None, primary_key=True)
    campaign_id: str = Field(foreign_key="campaign.id", index=True)
    perturbation: str
    values: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class ModelFit(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="round.id", index=True, unique=True)
    surrogate: str
    policy: str
    n_train: int
    fit_seconds: float
    select_seconds: float = 0.0
    metrics: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    params: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # fitted hyperparameters


def store_url(store: str | None) -> str:
    """A SQLAlchemy URL from a path or URL (default `runs/perturbloop.db` under the current directory)."""
    store = store or DEFAULT_STORE
    if "://" in store:
        return store
    p = Path(store).expanduser().resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p}"


def display_url(url: str) -> str:
    """`url` with its password masked (`***`): the only form of a store URL to print, log or show."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # unparseable (e.g. a bad port): mask what looks like `user:password@`
        return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


def sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


class Store:
    """Repository API over the SQL store."""

    def __init__(self, url: str | None = None):
        self.url = store_url(url)
        db = sqlite_path(self.url)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(self.url, connect_args={"timeout": 30} if self.url.startswith("sqlite") else {})
        if self.url.startswith("sqlite"):
            @event.listens_for(self.engine, "connect")
            def _pragma(dbapi_conn, _):  # noqa: ANN001
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA journal_mode=WAL")
                cur.close()
        SQLModel.metadata.create_all(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    # campaigns -----------------------------------------------------------------------------
    def get_campaign(self, campaign_id: str) -> Campaign | None:
        with self.session() as s:
            return s.get(Campaign, campaign_id)

    def create_or_check_campaign(self, campaign_id: str, config: dict,
                                 normalise: Callable[[dict], dict] | None = None) -> Campaign:
        """Create the campaign, or return it if it exists with the same config (a resume).

        `normalise` maps a stored config to today's format (e.g. validate it with today's config model and
        dump it, so fields added since it was stored take their defaults) before the two are compared; a
        stored config it cannot read counts as different.
        """
        with self.session() as s:
            c = s.get(Campaign, campaign_id)
            if c is None:
                c = Campaign(id=campaign_id, config=config)
                s.add(c)
                return c
            stored = c.config
            if normalise is not None:
                try:
                    stored = normalise(stored)
                except Exception:  # noqa: BLE001 - unreadable under today's model: a different config
                    stored = c.config
            if json.dumps(stored, sort_keys=True) != json.dumps(config, sort_keys=True):
                raise StoreError(
                    f"campaign {campaign_id!r} already exists in {display_url(self.url)} with a different config; "
                    "resume it with the same config or choose another name"
                )
            return c

    def list_campaigns(self) -> list[Campaign]:
        with self.session() as s:
            return list(s.exec(select(Campaign).order_by(Campaign.created_at)))

    def set_campaign_status(self, campaign_id: str, status: str) -> None:
        with self.session() as s:
            c = s.get(Campaign, campaign_id)
            if c is None:
                raise StoreError(f"no campaign {campaign_id!r}")
            c.status, c.updated_at = status, _now()
            s.add(c)

    # rounds --------------------------------------------------------------------------------
    def get_round(self, campaign_id: str, index: int) -> Round | None:
        with self.session() as s:
            return s.exec(select(Round).where(Round.campaign_id == campaign_id, Round.index == index)).first()

    def get_or_create_round(self, campaign_id: str, index: int) -> Round:
        with self.session() as s:
            r = s.exec(select(Round).where(Round.campaign_id == campaign_id, Round.index == index)).first()
            if r is None:
                r = Round(campaign_id=campaign_id, index=index)
                s.add(r)
                s.flush()
            return r

    def rounds(self, campaign_id: str) -> list[Round]:
        with self.session() as s:
            return list(s.exec(select(Round).where(Round.campaign_id == campaign_id).order_by(Round.index)))

    def set_round_status(self, round_id: int, status: str, *, session: Session | None = None) -> None:
        def _do(s: Session) -> None:
            r = s.get(Round, round_id)
            r.status = status
            if status in ("ingested", "rejected"):
                r.finished_at = _now()
            s.add(r)
        if session is not None:
            _do(session)
        else:
            with self.session() as s:
                _do(s)

    # model fits and proposals ----------------------------------------------------------------
    def save_proposal(self, round_id: int, items: Sequence[Any], policy: str, fit: ModelFit) -> None:
        """Proposals and the round's model-fit record, in one transaction."""
        with self.session() as s:
            if s.exec(select(Proposal).where(Proposal.round_id == round_id)).first() is not None:
                return
            for rank, it in enumerate(items):
                s.add(Proposal(round_id=round_id, rank=rank, perturbation=it.perturbation, policy=policy,
                               mean=it.mean, sd=it.sd, acq_value=it.acq_value, rationale=it.rationale))
            s.add(fit)
            self.set_round_status(round_id, "proposed", session=s)

    def proposals(self, round_id: int) -> list[Proposal]:
        with self.session() as s:
            return list(s.exec(select(Proposal).where(Proposal.round_id == round_id).order_by(Proposal.rank)))

    def latest_params(self, campaign_id: str, surrogate: str) -> dict:
        """Hyperparameters of the campaign's most recent fit of `surrogate` (warm start), or {}."""
        with self.session() as s:
            q = (select(ModelFit).join(Round, ModelFit.round_id == Round.id)
                 .where(Round.campaign_id == campaign_id, ModelFit.surrogate == surrogate).order_by(Round.index.desc()))
            fit = s.exec(q).first()
            return dict(fit.params) if fit is not None else {}

    def model_fit(self, round_id: int) -> ModelFit | None:
        with self.session() as s:
            return s.exec(select(ModelFit).where(ModelFit.round_id == round_id)).first()

    # decisions -----------------------------------------------------------------------------
    def decision(self, round_id: int) -> Decision | None:
        with self.session() as s:
            return s.exec(select(Decision).where(Decision.round_id == round_id)).first()

    def save_decision(self, decision: Decision) -> Decision:
        """Store the round's decision unless it has one; returns the stored decision (`decision`
        itself only if it won). Atomic: of concurrent calls on one round exactly one inserts (the
        unique round_id decides) and the others get the winner back."""
        existing = self.decision(decision.round_id)
        if existing is not None:
            return existing
        try:
            with self.session() as s:
                s.add(decision)
                s.flush()  # the INSERT first: a concurrent winner makes it fail here, before any other write
                self.set_round_status(decision.round_id, "rejected" if decision.action == "rejected" else "approved",
                                      session=s)
        except IntegrityError:
            existing = self.decision(decision.round_id)
            if existing is None:  # some other constraint failed (e.g. no such round)
                raise
            return existing
        return decision

    # lab jobs ------------------------------------------------------------------------------
    def lab_job(self, idempotency_key: str) -> LabJob | None:
        with self.session() as s:
            return s.exec(select(LabJob).where(LabJob.idempotency_key == idempotency_key)).first()

    def lab_jobs(self, round_id: int) -> list[LabJob]:
        with self.session() as s:
            return list(s.exec(select(LabJob).where(LabJob.round_id == round_id)))

    @staticmethod
    def _job(s: Session, key: str) -> LabJob:
        job = s.exec(select(LabJob).where(LabJob.idempotency_key == key)).first()
        if job is None:
            raise StoreError(f"no lab job with idempotency key {key!r}")
        return job

    def begin_lab_job(self, round_id: int, adapter: str, key: str, perturbations: list[str]) -> LabJob:
        """Record the intent to submit before submitting (so a crash cannot hide a submission)."""
        with self.session() as s:
            job = s.exec(select(LabJob).where(LabJob.idempotency_key == key)).first()
            if job is None:
                job = LabJob(round_id=round_id, adapter=adapter, idempotency_key=key, perturbations=perturbations)
                s.add(job)
                s.flush()
            return job

    def mark_submitted(self, key: str, external_id: str) -> None:
        with self.session() as s:
            job = self._job(s, key)
            if job.status == "submitting":
                job.status, job.external_id, job.submitted_at = "submitted", external_id, _now()
                s.add(job)
                self.set_round_status(job.round_id, "dispatched", session=s)

    # observations --------------------------------------------------------------------------
    def ingest(self, campaign_id: str, round_id: int, key: str, rows: Sequence[Observation], *,
               complete: bool = True, responses: dict[str, list[float]] | None = None) -> int:
        """Insert the observations not yet stored; returns how many were new.

        `complete`: the lab job is done, so close it (`collected`) and the round (`ingested`); else the
        job stays open as `partial` and the round waits for the rest. An observation is stored at most
        once per campaign and perturbation (a unique constraint, and checked here). `responses`: the
        response vectors of a response campaign, stored with their observations.
        """
        responses = responses or {}
        with self.session() as s:
            have = set(s.exec(select(Observation.perturbation).where(Observation.campaign_id == campaign_id)))
            new = []
            for r in rows:
                if r.perturbation not in have:
                    have.add(r.perturbation)
                    new.append(r)
                    s.add(r)
                    if r.perturbation in responses:
                        s.add(ResponseVector(campaign_id=campaign_id, perturbation=r.perturbation,
                                             values=list(responses[r.perturbation])))
            job = self._job(s, key)
            if complete:
                job.status, job.collected_at = "collected", _now()
                self.set_round_status(round_id, "ingested", session=s)
            elif job.status != "collected":
                job.status = "partial"
            s.add(job)
            return len(new)

    def observed(self, campaign_id: str) -> set[str]:
        """Perturbations with an observation (measured or failed) in the campaign."""
        with self.session() as s:
            return set(s.exec(select(Observation.perturbation).where(Observation.campaign_id == campaign_id)))

    def responses(self, campaign_id: str) -> dict[str, list[float]]:
        """A response campaign's measured response vectors, by perturbation (in ingest order)."""
        with self.session() as s:
            q = select(ResponseVector).where(ResponseVector.campaign_id == campaign_id).order_by(ResponseVector.id)
            return {v.perturbation: list(v.values) for v in s.exec(q)}

    def update_fit_metrics(self, round_id: int, metrics: dict[str, float]) -> None:
        """Merge `metrics` into the round's ModelFit record (scores computed after the round is ingested)."""
        with self.session() as s:
            fit = s.exec(select(ModelFit).where(ModelFit.round_id == round_id)).first()
            if fit is None:
                raise StoreError(f"round {round_id} has no model-fit record")
            fit.metrics = {**(fit.metrics or {}), **metrics}
            s.add(fit)

    def observations(self, campaign_id: str, *, include_failed: bool = False) -> list[Observation]:
        with self.session() as s:
            q = select(Observation).where(Observation.campaign_id == campaign_id)
            if not include_failed:
                q = q.where(Observation.failed == False)  # noqa: E712
            return list(s.exec(q.order_by(Observation.id)))
