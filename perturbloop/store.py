"""The campaign store: SQLModel tables and a small repository API.

The store, not memory, is the source of truth. Every write that belongs to one step of a
round happens in one transaction, so a killed process leaves either the whole step or none
of it; every step checks the store first and is a no-op when its work is already there.

Tables: Campaign, Round, Proposal, ProposalRecord, Decision, Rejection, Veto, LabJob, Observation, ResponseVector,
ModelFit.

Schema changes add tables, never columns: `create_all` adds a new table to an existing store when it is opened
for writing (the migration), and a store opened read-only that predates a table reads it as empty
(`Store.has_table`), so a store written by an earlier version still loads, resumes and reports.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint, delete, event, inspect, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, IntegrityError, NoSuchModuleError, OperationalError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from perturbloop.errors import StoreError

DEFAULT_STORE = "runs/perturbloop.db"


def _now() -> datetime:
    return datetime.now(UTC)


class _Row(SQLModel):
    """A table row keyed by an integer id (every table but Campaign)."""

    id: int | None = Field(default=None, primary_key=True)


class Campaign(SQLModel, table=True):
    id: str = Field(primary_key=True)
    config: dict = Field(sa_column=Column(JSON, nullable=False))
    status: str = "running"  # running | awaiting_approval | finished
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class Round(_Row, table=True):
    __table_args__ = (UniqueConstraint("campaign_id", "index"),)
    campaign_id: str = Field(foreign_key="campaign.id", index=True)
    index: int
    # fitting | proposed | approved | dispatched | collected | ingested; `rejected`: a round given up on a
    # rejection by an earlier version (today a rejected proposal sends the round back to `fitting`)
    status: str = "fitting"
    created_at: datetime = Field(default_factory=_now)
    finished_at: datetime | None = None


class Proposal(_Row, table=True):
    __table_args__ = (UniqueConstraint("round_id", "perturbation"),)
    round_id: int = Field(foreign_key="round.id", index=True)
    rank: int
    perturbation: str
    policy: str
    mean: float | None = None
    sd: float | None = None
    acq_value: float | None = None
    rationale: str = ""


class ProposalRecord(_Row, table=True):
    """One batch proposed for a round (a round has several when proposals are rejected): when it was made and
    when it was decided (approval wait = `decided_at - proposed_at`), how, and the scale of its predictions.

    `units`: how the proposal's stored `mean`/`sd` map to the screen's own units (`agent.screen_units`), e.g.
    `{"kind": "log", "offset": m, "hit_threshold": t}`; empty when they are in the campaign's units already.
    Added after the first stores were written: rounds proposed before it have no record."""

    round_id: int = Field(foreign_key="round.id", index=True)
    proposed_at: datetime = Field(default_factory=_now)
    decided_at: datetime | None = None
    outcome: str | None = None  # auto | approved | edited | rejected, once decided
    units: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Decision(_Row, table=True):
    round_id: int = Field(foreign_key="round.id", index=True, unique=True)
    action: str  # auto | approved | edited (rejections: the Rejection table; `rejected` in older stores)
    by: str = "auto"
    at: datetime = Field(default_factory=_now)
    note: str = ""
    added: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    dropped: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    final: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class Rejection(_Row, table=True):
    """A rejected proposal: who rejected it, when and why, and the batch as it was proposed. A rejected
    proposal is not a measured round: the round is proposed again, without these perturbations."""

    round_id: int = Field(foreign_key="round.id", index=True)
    by: str
    at: datetime = Field(default_factory=_now)
    note: str = ""
    policy: str = ""
    # the rejected batch in rank order: {perturbation, mean, sd, acq_value, rationale}
    items: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))

    @property
    def perturbations(self) -> list[str]:
        return [it["perturbation"] for it in self.items]


class Veto(_Row, table=True):
    """A perturbation the scientist ruled out for the rest of the campaign: never proposed again."""

    __table_args__ = (UniqueConstraint("campaign_id", "perturbation"),)
    campaign_id: str = Field(foreign_key="campaign.id", index=True)
    perturbation: str
    round_id: int = Field(foreign_key="round.id")
    by: str
    at: datetime = Field(default_factory=_now)
    note: str = ""


class CampaignFile(_Row, table=True):
    """A file the campaign's config names (a gene list, a screen, embeddings, ...) and its content hash when the
    campaign first ran: a file changed behind the campaign is refused like a changed config."""

    __table_args__ = (UniqueConstraint("campaign_id", "field"),)
    campaign_id: str = Field(foreign_key="campaign.id", index=True)
    field: str  # the config field naming it, e.g. design.genes
    path: str
    sha256: str


class LabJob(_Row, table=True):
    round_id: int = Field(foreign_key="round.id", index=True)
    adapter: str
    idempotency_key: str = Field(unique=True)
    external_id: str | None = None
    status: str = "submitting"  # submitting | submitted | partial (some results in) | collected | failed
    perturbations: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    submitted_at: datetime | None = None
    collected_at: datetime | None = None


class Observation(_Row, table=True):
    __table_args__ = (UniqueConstraint("campaign_id", "perturbation"),)
    campaign_id: str = Field(foreign_key="campaign.id", index=True)
    round_id: int = Field(foreign_key="round.id", index=True)
    perturbation: str
    value: float | None = None
    replicates: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    failed: bool = False
    error: str | None = None
    hit: bool | None = None


class ResponseVector(_Row, table=True):
    """A response campaign's measured response of one perturbation (e.g. pseudobulk LFC over the
    readout genes, in the campaign's readout order); its Observation holds the magnitude."""

    __table_args__ = (UniqueConstraint("campaign_id", "perturbation"),)
    campaign_id: str = Field(foreign_key="campaign.id", index=True)
    perturbation: str
    values: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class ModelFit(_Row, table=True):
    round_id: int = Field(foreign_key="round.id", index=True, unique=True)
    surrogate: str
    policy: str
    n_train: int
    fit_seconds: float
    select_seconds: float = 0.0
    metrics: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    params: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # fitted hyperparameters


def store_url(store: str | None) -> str:
    """A SQLAlchemy URL from a path or URL (default `runs/perturbloop.db` under the current directory).
    A PostgreSQL URL without a driver (`postgresql://`, `postgres://`) uses psycopg (3) unless psycopg2 is
    installed. Raises a StoreError when a SQLite file's folder cannot be made."""
    store = store or DEFAULT_STORE
    if "://" in store:
        scheme, rest = store.split("://", 1)
        if scheme in ("postgres", "postgresql") and importlib.util.find_spec("psycopg2") is None:
            return f"postgresql+psycopg://{rest}"
        return store
    p = Path(store).expanduser().resolve()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"store {str(p)!r}: cannot create its folder {str(p.parent)!r} ({e.strerror})") from None
    return f"sqlite:///{p}"


def display_url(url: str) -> str:
    """`url` with its password masked (`***`): the only form of a store URL to print, log or show."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # unparseable (e.g. a bad port): mask what looks like `user:password@`
        return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


def sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


POSTGRES_CONNECT_TIMEOUT_S = 10  # a server that does not answer is reported in seconds, not after the OS's minutes
SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a SQLite writer waits for another process's lock


def _sqlite_writable(db: Path) -> bool:
    """Whether this process may write `db` (the file, and the folder for its -wal/-shm files)."""
    return (not db.exists() or os.access(db, os.W_OK)) and os.access(db.parent, os.W_OK)


def _readonly_error(e: BaseException) -> bool:
    return "readonly database" in str(e)


def _use_wal(cur: sqlite3.Cursor, timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> None:
    """Switch the database to WAL (kept in the file: a no-op once any process has done it). The switch needs an
    exclusive lock and SQLite answers `database is locked` at once, without its busy handler, while other
    connections hold the file (processes opening one new store together), so it is retried until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _read_only_sqlite(db: Path) -> sqlite3.Connection:
    """A connection that never writes (URI `mode=ro`). A WAL database in a folder this process cannot write has
    no -shm file to share: it is then read as it is on disk (`immutable=1`: what a writer has not yet
    checkpointed is not seen)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30, check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        return sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True, timeout=30, check_same_thread=False)


class StoreReadOnlyError(StoreError):
    """The store can be read but not written by this process."""


class _Lost(Exception):
    """A decision arrived after the proposal had been decided on (internal to `Store.save_decision`)."""


class Store:
    """Repository API over the SQL store.

    `read_only`: open the store for reading only (`perturbloop status`): a SQLite store this process
    cannot write is still read. Otherwise a store that cannot be written is a StoreError up front, so a
    command that writes fails before it starts. A store that cannot be opened (a folder, an unknown URL
    scheme, a server that does not answer, a file that is no database) is a StoreError naming it.
    """

    def __init__(self, url: str | None = None, *, read_only: bool = False):
        self.url = store_url(url)
        self.read_only = read_only
        self._tables: dict[str, bool] = {}  # table name -> present (read-only stores, see `has_table`)
        shown = display_url(self.url)
        db = sqlite_path(self.url)
        if db is not None:
            if db.is_dir():
                raise StoreError(f"store {str(db)!r} is a folder, not a SQLite file: name a file in it "
                                 f"(e.g. {str(db / 'perturbloop.db')!r})")
            if read_only and not db.is_file():
                raise StoreError(f"store {str(db)!r} does not exist")
            if not read_only and not _sqlite_writable(db):
                raise StoreReadOnlyError(f"store {str(db)!r} is read-only (no write permission on it or its folder): "
                                 "`perturbloop status` can still read it")
        try:
            self.engine: Engine = self._engine(db)
            if read_only:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
            else:
                with self.engine.connect() as conn:  # one process at a time creates the tables (runs started together)
                    if db is not None:
                        conn.exec_driver_sql("BEGIN IMMEDIATE")
                    SQLModel.metadata.create_all(conn)
                    conn.commit()
                if db is not None:  # can it be written? (a read-only file system, an immutable file, even for root)
                    with self.engine.connect() as conn:
                        conn.exec_driver_sql("BEGIN IMMEDIATE")
                        conn.exec_driver_sql("ROLLBACK")
        except (ArgumentError, NoSuchModuleError, ImportError) as e:
            raise StoreError(f"store {shown}: not a store URL this machine can open ({e}); use a SQLite path, "
                             "or a sqlite:/// or postgresql:// URL") from None
        except OperationalError as e:
            if _readonly_error(e):
                raise StoreReadOnlyError(f"store {shown} is read-only: `perturbloop status` can still read it") from None
            what = "cannot open" if db is not None else "cannot connect to"
            reason = str(e.orig).strip().splitlines()[0] if e.orig is not None and str(e.orig).strip() else str(e)
            raise StoreError(f"{what} store {shown}: {reason}") from None
        except DatabaseError as e:
            raise StoreError(f"store {shown} is not a readable database ({e.orig})") from None

    def has_table(self, table: type[SQLModel]) -> bool:
        """Whether the store has `table`: always once opened for writing (`create_all` adds tables that are new
        since the store was written); a store opened read-only may predate it (then it reads as empty)."""
        if not self.read_only:
            return True
        name = table.__tablename__
        if name not in self._tables:
            self._tables[name] = inspect(self.engine).has_table(name)
        return self._tables[name]

    @classmethod
    def for_reading(cls, url: str | None = None) -> Store:
        """The store opened as usual, or read-only where this process cannot write it (`perturbloop status`)."""
        try:
            return cls(url)
        except StoreReadOnlyError:
            return cls(url, read_only=True)

    def _engine(self, db: Path | None) -> Engine:
        if db is None:
            args = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S} if self.url.startswith("postgres") else {}
            return create_engine(self.url, connect_args=args)
        if self.read_only:
            engine = create_engine("sqlite://", creator=lambda: _read_only_sqlite(db))
        else:
            engine = create_engine(self.url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

        @event.listens_for(engine, "connect")
        def _pragma(dbapi_conn, _):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            if not self.read_only:
                _use_wal(cur)
            cur.close()

        return engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            try:
                yield s
                s.commit()
            except BaseException as e:
                s.rollback()
                if isinstance(e, OperationalError) and _readonly_error(e):
                    raise StoreReadOnlyError(f"store {display_url(self.url)} is read-only: "
                                             "nothing was written") from None
                raise

    def _all(self, query: Any, table: type[SQLModel] | None = None) -> list:
        """Every row `query` selects; none when the store, opened read-only, predates `table` (`has_table`)."""
        if table is not None and not self.has_table(table):
            return []
        with self.session() as s:
            return list(s.exec(query))

    def _first(self, query: Any) -> Any:
        """The first row `query` selects, or None."""
        with self.session() as s:
            return s.exec(query).first()

    # campaigns -----------------------------------------------------------------------------
    def get_campaign(self, campaign_id: str) -> Campaign | None:
        return self._first(select(Campaign).where(Campaign.id == campaign_id))

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
        return self._all(select(Campaign).order_by(Campaign.created_at))

    def set_campaign_status(self, campaign_id: str, status: str) -> None:
        with self.session() as s:
            c = s.get(Campaign, campaign_id)
            if c is None:
                raise StoreError(f"no campaign {campaign_id!r}")
            c.status, c.updated_at = status, _now()
            s.add(c)

    # rounds --------------------------------------------------------------------------------
    def get_round(self, campaign_id: str, index: int) -> Round | None:
        return self._first(select(Round).where(Round.campaign_id == campaign_id, Round.index == index))

    def get_or_create_round(self, campaign_id: str, index: int) -> Round:
        with self.session() as s:
            r = s.exec(select(Round).where(Round.campaign_id == campaign_id, Round.index == index)).first()
            if r is None:
                r = Round(campaign_id=campaign_id, index=index)
                s.add(r)
                s.flush()
            return r

    def rounds(self, campaign_id: str) -> list[Round]:
        return self._all(select(Round).where(Round.campaign_id == campaign_id).order_by(Round.index))

    def drop_unused_round(self, round_id: int) -> bool:
        """Delete round `round_id` if it is still `fitting` and no row refers to it (a round the campaign ended in
        before proposing anything, e.g. a spent budget); whether it was deleted."""
        with self.session() as s:
            r = s.get(Round, round_id)
            if r is None or r.status != "fitting":
                return False
            for table in (Proposal, ProposalRecord, Decision, Rejection, Veto, LabJob, Observation, ModelFit):
                if s.exec(select(table).where(table.round_id == round_id)).first() is not None:
                    return False
            s.delete(r)
            return True

    @staticmethod
    def _set_round_status(s: Session, round_id: int, status: str) -> None:
        r = s.get(Round, round_id)
        r.status = status
        if status == "ingested":
            r.finished_at = _now()
        s.add(r)

    # model fits and proposals ----------------------------------------------------------------
    def save_proposal(self, round_id: int, items: Sequence[Any], policy: str, fit: ModelFit, *,
                      units: dict | None = None) -> None:
        """Proposals, the round's model-fit record and the proposal's record (made now; `units`: the scale of
        the predictions, see `ProposalRecord`), in one transaction."""
        with self.session() as s:
            if s.exec(select(Proposal).where(Proposal.round_id == round_id)).first() is not None:
                return
            for rank, it in enumerate(items):
                s.add(Proposal(round_id=round_id, rank=rank, perturbation=it.perturbation, policy=policy,
                               mean=it.mean, sd=it.sd, acq_value=it.acq_value, rationale=it.rationale))
            s.add(fit)
            s.add(ProposalRecord(round_id=round_id, units=dict(units or {})))
            self._set_round_status(s, round_id, "proposed")

    def proposals(self, round_id: int) -> list[Proposal]:
        return self._all(select(Proposal).where(Proposal.round_id == round_id).order_by(Proposal.rank))

    def latest_params(self, campaign_id: str, surrogate: str) -> dict:
        """Hyperparameters of the campaign's most recent fit of `surrogate` (warm start), or {}."""
        fit = self._first(select(ModelFit).join(Round, ModelFit.round_id == Round.id)
                          .where(Round.campaign_id == campaign_id, ModelFit.surrogate == surrogate)
                          .order_by(Round.index.desc()))
        return dict(fit.params) if fit is not None else {}

    def model_fit(self, round_id: int) -> ModelFit | None:
        return self._first(select(ModelFit).where(ModelFit.round_id == round_id))

    # decisions -----------------------------------------------------------------------------
    def decision(self, round_id: int) -> Decision | None:
        return self._first(select(Decision).where(Decision.round_id == round_id))

    def save_decision(self, decision: Decision, *, vetoed: Sequence[str] = (),
                      seen: Sequence[str] | None = None) -> Decision:
        """Store the decision on the round's pending proposal, and the perturbations it `vetoed`; returns the
        decision that was stored (`decision` itself only if it won). `seen`: the proposal's perturbations, in
        rank order, as the decision's maker saw them; a decision that arrives after the round was rejected and
        proposed again (another batch) is not taken for the new proposal: it gets the rejection back.

        A rejection is kept as a Rejection record (with the rejected batch) and the round goes back to
        `fitting` without proposals, to be proposed again; any other decision is the round's Decision and
        the round is `approved`. Atomic: the round's move out of `proposed` is one conditional UPDATE, so of
        concurrent decisions on one proposal exactly one is stored; the others get the winner back (a
        rejection as an unsaved Decision with action `rejected`).
        """
        existing = self.decision(decision.round_id)
        if existing is not None:
            return existing
        rejected = decision.action == "rejected"
        try:
            with self.session() as s:
                # the first statement writes: it takes the write lock (SQLite) / the row lock (PostgreSQL)
                moved = s.exec(update(Round).where(Round.id == decision.round_id, Round.status == "proposed")
                               .values(status="fitting" if rejected else "approved")).rowcount
                if not moved:
                    raise _Lost()
                r = s.get(Round, decision.round_id)
                props = list(s.exec(select(Proposal).where(Proposal.round_id == r.id).order_by(Proposal.rank)))
                if seen is not None and [p.perturbation for p in props] != list(seen):
                    raise _Lost()  # made on an earlier proposal of this round (since rejected)
                record = s.exec(select(ProposalRecord).where(ProposalRecord.round_id == r.id,
                                                             ProposalRecord.decided_at.is_(None))
                                .order_by(ProposalRecord.id.desc())).first()
                if record is not None:  # (none for a proposal made before records were kept)
                    record.decided_at, record.outcome = decision.at, decision.action
                    s.add(record)
                if rejected:
                    s.add(Rejection(round_id=r.id, by=decision.by, at=decision.at, note=decision.note,
                                    policy=props[0].policy if props else "",
                                    items=[{"perturbation": p.perturbation, "mean": p.mean, "sd": p.sd,
                                            "acq_value": p.acq_value, "rationale": p.rationale} for p in props]))
                    s.exec(delete(Proposal).where(Proposal.round_id == r.id))
                    s.exec(delete(ModelFit).where(ModelFit.round_id == r.id))
                else:
                    proposed = {p.perturbation for p in props}
                    if set(decision.final) - set(decision.added) - proposed:
                        raise _Lost()  # made on an earlier proposal of this round (since rejected)
                    s.add(decision)
                    s.flush()
                have = set(s.exec(select(Veto.perturbation).where(Veto.campaign_id == r.campaign_id)))
                for label in dict.fromkeys(vetoed):
                    if label not in have:
                        s.add(Veto(campaign_id=r.campaign_id, perturbation=label, round_id=r.id, by=decision.by,
                                   at=decision.at, note=decision.note))
        except (_Lost, IntegrityError):
            existing = self.decision(decision.round_id)
            if existing is not None:
                return existing
            last = (self.rejections(decision.round_id) or [None])[-1]
            if last is None:
                raise StoreError(f"round {decision.round_id} has no proposal awaiting a decision") from None
            return Decision(round_id=decision.round_id, action="rejected", by=last.by, at=last.at, note=last.note)
        return decision

    def proposal_records(self, round_id: int) -> list[ProposalRecord]:
        """The round's proposals as made and decided (timestamps, outcome, units), oldest first; none for rounds
        proposed before records were kept."""
        return self._all(select(ProposalRecord).where(ProposalRecord.round_id == round_id).order_by(ProposalRecord.id),
                         ProposalRecord)

    def rejections(self, round_id: int) -> list[Rejection]:
        """The round's rejected proposals, oldest first."""
        return self._all(select(Rejection).where(Rejection.round_id == round_id).order_by(Rejection.id), Rejection)

    def check_files(self, campaign_id: str, files: dict[str, tuple[str, str]]) -> None:
        """Record the content hash of every file the campaign's config names (`field -> (path, sha256)`), or, for a
        campaign that has them, refuse (StoreError naming the file) any that changed since; a file recorded for
        a field is checked, a field seen for the first time is recorded."""
        with self.session() as s:
            known = {f.field: f for f in s.exec(select(CampaignFile).where(CampaignFile.campaign_id == campaign_id))}
            changed = [f"{field} ({path})" for field, (path, digest) in files.items()
                       if field in known and known[field].sha256 != digest]
            if changed:
                raise StoreError(f"campaign {campaign_id!r}: {', '.join(changed)} changed since the campaign started "
                                 "(the store holds measurements and proposals made with the old content); restore the "
                                 "file or start a campaign under another name")
            for field, (path, digest) in files.items():
                if field not in known:
                    s.add(CampaignFile(campaign_id=campaign_id, field=field, path=path, sha256=digest))

    def vetoes(self, campaign_id: str) -> list[Veto]:
        """Perturbations vetoed in the campaign (never proposed again), oldest first."""
        return self._all(select(Veto).where(Veto.campaign_id == campaign_id).order_by(Veto.id), Veto)

    def decisions(self, campaign_id: str) -> list[tuple[Round, Decision]]:
        """Every round of the campaign that has a decision, with it, in round order."""
        q = (select(Round, Decision).join(Decision, Decision.round_id == Round.id)
             .where(Round.campaign_id == campaign_id).order_by(Round.index))
        return [(r, d) for r, d in self._all(q)]

    # lab jobs ------------------------------------------------------------------------------
    def lab_job(self, idempotency_key: str) -> LabJob | None:
        return self._first(select(LabJob).where(LabJob.idempotency_key == idempotency_key))

    def lab_jobs(self, round_id: int) -> list[LabJob]:
        return self._all(select(LabJob).where(LabJob.round_id == round_id))

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
                self._set_round_status(s, job.round_id, "dispatched")

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
                self._set_round_status(s, round_id, "ingested")
            elif job.status != "collected":
                job.status = "partial"
            s.add(job)
            return len(new)

    def observed(self, campaign_id: str) -> set[str]:
        """Perturbations with an observation (measured or failed) in the campaign."""
        return set(self._all(select(Observation.perturbation).where(Observation.campaign_id == campaign_id)))

    def responses(self, campaign_id: str) -> dict[str, list[float]]:
        """A response campaign's measured response vectors, by perturbation (in ingest order)."""
        q = select(ResponseVector).where(ResponseVector.campaign_id == campaign_id).order_by(ResponseVector.id)
        return {v.perturbation: list(v.values) for v in self._all(q)}

    def update_fit_metrics(self, round_id: int, metrics: dict[str, float]) -> None:
        """Merge `metrics` into the round's ModelFit record (scores computed after the round is ingested)."""
        with self.session() as s:
            fit = s.exec(select(ModelFit).where(ModelFit.round_id == round_id)).first()
            if fit is None:
                raise StoreError(f"round {round_id} has no model-fit record")
            fit.metrics = {**(fit.metrics or {}), **metrics}
            s.add(fit)

    def observations(self, campaign_id: str, *, include_failed: bool = False) -> list[Observation]:
        q = select(Observation).where(Observation.campaign_id == campaign_id)
        if not include_failed:
            q = q.where(Observation.failed == False)  # noqa: E712
        return self._all(q.order_by(Observation.id))
