"""The SQL store: every step is idempotent when repeated (resume after a crash)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, SQLModel, create_engine, func, select

from perturbloop.errors import StoreError
from perturbloop.store import (
    Decision,
    LabJob,
    ModelFit,
    Observation,
    Proposal,
    ProposalRecord,
    Rejection,
    Round,
    Store,
    display_url,
)

CONFIG = {"name": "c1", "batch_size": 4, "data": {"screen": "schmidt2021_il2"}}


@dataclass
class Item:  # the fields of acquisition.ProposedItem that the store reads
    perturbation: str
    mean: float | None = None
    sd: float | None = None
    acq_value: float | None = None
    rationale: str = ""


def _count(store: Store, table) -> int:
    with Session(store.engine) as s:
        return s.exec(select(func.count()).select_from(table)).one()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Store:
    """Every store test runs on a SQLite file and on a real PostgreSQL server (fresh tables each test)."""
    if request.param == "sqlite":
        yield Store(str(tmp_path / "runs" / "store.db"))
        return
    url = request.getfixturevalue("postgres_url")
    SQLModel.metadata.drop_all(create_engine(url))
    st = Store(url)
    yield st
    st.engine.dispose()


@pytest.fixture
def round_id(store) -> int:
    store.create_or_check_campaign("c1", CONFIG)
    return store.get_or_create_round("c1", 0).id


@pytest.fixture
def proposed(store, round_id) -> int:
    """A round whose proposal (VAV1, CD3G, LAT) awaits a decision."""
    store.save_proposal(round_id, [Item("VAV1", 1.0, 0.5, 2.0, "top"), Item("CD3G"), Item("LAT")], "ucb", _fit(round_id))
    return round_id


def _fit(round_id: int) -> ModelFit:
    return ModelFit(round_id=round_id, surrogate="gp", policy="ucb", n_train=10, fit_seconds=0.5, metrics={"spearman": 0.3})


def test_store_creates_sqlite_file(tmp_path):
    s = Store(str(tmp_path / "deep" / "dir" / "x.db"))
    assert s.url == f"sqlite:///{tmp_path / 'deep' / 'dir' / 'x.db'}"
    assert (tmp_path / "deep" / "dir" / "x.db").is_file()


def test_campaign_idempotent_for_same_config(store):
    a = store.create_or_check_campaign("c1", CONFIG)
    b = store.create_or_check_campaign("c1", {"data": {"screen": "schmidt2021_il2"}, "batch_size": 4, "name": "c1"})
    assert a.id == b.id == "c1"
    assert b.config == CONFIG
    assert [c.id for c in store.list_campaigns()] == ["c1"]


def test_campaign_with_different_config_raises(store):
    store.create_or_check_campaign("c1", CONFIG)
    with pytest.raises(StoreError, match=r"'c1'.*different config"):
        store.create_or_check_campaign("c1", {**CONFIG, "batch_size": 8})
    assert store.get_campaign("c1").config == CONFIG


def test_campaign_persists_across_store_instances(tmp_path):
    path = str(tmp_path / "p.db")
    Store(path).create_or_check_campaign("c1", CONFIG)
    again = Store(path)
    assert again.get_campaign("c1").config == CONFIG
    with pytest.raises(StoreError):
        again.create_or_check_campaign("c1", {**CONFIG, "seed": 1})


def test_set_campaign_status(store):
    store.create_or_check_campaign("c1", CONFIG)
    store.set_campaign_status("c1", "finished")
    assert store.get_campaign("c1").status == "finished"
    with pytest.raises(StoreError, match="no campaign 'c2'"):
        store.set_campaign_status("c2", "finished")


def test_round_idempotent(store):
    store.create_or_check_campaign("c1", CONFIG)
    r0 = store.get_or_create_round("c1", 0)
    assert r0.id is not None and r0.status == "fitting"
    assert store.get_or_create_round("c1", 0).id == r0.id
    r1 = store.get_or_create_round("c1", 1)
    assert r1.id != r0.id
    assert [r.index for r in store.rounds("c1")] == [0, 1]
    assert _count(store, Round) == 2
    assert store.get_round("c1", 5) is None


def test_save_proposal_twice_does_not_duplicate(store, round_id):
    items = [Item("VAV1", 1.0, 0.5, 2.0, "top"), Item("CD3G", 0.8, 0.1, 1.0), Item("LAT", 0.1, 0.9, 1.9)]
    store.save_proposal(round_id, items, "ucb", _fit(round_id))
    store.save_proposal(round_id, [Item("ZAP70")], "random", _fit(round_id))
    props = store.proposals(round_id)
    assert [p.perturbation for p in props] == ["VAV1", "CD3G", "LAT"]
    assert [p.rank for p in props] == [0, 1, 2]
    assert props[0].policy == "ucb" and props[0].rationale == "top" and props[0].acq_value == 2.0
    assert _count(store, Proposal) == 3
    assert _count(store, ModelFit) == 1
    assert store.model_fit(round_id).metrics == {"spearman": 0.3}
    assert store.get_round("c1", 0).status == "proposed"


def test_decision_saved_once(store, proposed):
    round_id = proposed
    first = store.save_decision(Decision(round_id=round_id, action="edited", by="alice", added=["LAT"], dropped=["CD3G"], final=["VAV1", "LAT"]))
    second = store.save_decision(Decision(round_id=round_id, action="rejected", by="bob"))
    assert second.id == first.id and second.action == "edited" and second.by == "alice"
    assert _count(store, Decision) == 1
    d = store.decision(round_id)
    assert d.final == ["VAV1", "LAT"] and d.dropped == ["CD3G"]
    assert store.get_round("c1", 0).status == "approved"


def test_concurrent_decisions_store_exactly_one(store, proposed):
    """Eight decisions on one proposal at once: one is stored, and every caller gets that one back
    (never a UNIQUE-constraint error, never its own unstored decision); a rejection that wins is kept
    as a Rejection and the round is proposed again."""
    round_id = proposed
    n = 8
    barrier = threading.Barrier(n)

    def save(i: int) -> Decision:
        d = Decision(round_id=round_id, action="rejected" if i % 2 else "approved", by=f"reviewer-{i}")
        barrier.wait()
        return store.save_decision(d)

    with ThreadPoolExecutor(n) as ex:
        answers = list(ex.map(save, range(n)))
    assert _count(store, Decision) + _count(store, Rejection) == 1
    (won,) = {(a.action, a.by) for a in answers}
    if won[0] == "rejected":
        assert store.rejections(round_id)[0].by == won[1] and store.get_round("c1", 0).status == "fitting"
    else:
        assert store.decision(round_id).by == won[1] and store.get_round("c1", 0).status == "approved"


def test_display_url_hides_the_password():
    url = "postgresql+psycopg://ada:pw-SECRET%4042@db.example.org:5432/perturbloop"
    shown = display_url(url)
    assert "SECRET" not in shown and shown == "postgresql+psycopg://ada:***@db.example.org:5432/perturbloop"
    assert display_url("sqlite:////tmp/runs/pl.db") == "sqlite:////tmp/runs/pl.db"
    # a URL SQLAlchemy cannot parse still loses its password
    assert "SECRET" not in display_url("postgresql://ada:pw-SECRET@db:notaport/x")


def test_rejection_keeps_the_batch_and_reopens_the_round(store, proposed):
    """Issue 13 (8): a rejection is no decision of the round: it is kept (who, why, the batch) and the round
    goes back to `fitting`, without proposals or model fit, to be proposed again; a decision on the
    rejected proposal that arrives later is refused (it gets the rejection back)."""
    mine = Decision(round_id=proposed, action="rejected", by="bob", note="off target")
    assert store.save_decision(mine, vetoed=["LAT"]) is mine
    r = store.get_round("c1", 0)
    assert r.status == "fitting" and store.decision(proposed) is None
    assert not store.proposals(proposed) and store.model_fit(proposed) is None
    (rej,) = store.rejections(proposed)
    assert (rej.by, rej.note, rej.perturbations, rej.policy) == ("bob", "off target", ["VAV1", "CD3G", "LAT"], "ucb")
    assert rej.items[0]["rationale"] == "top"
    assert [(v.perturbation, v.by, v.note) for v in store.vetoes("c1")] == [("LAT", "bob", "off target")]
    late = store.save_decision(Decision(round_id=proposed, action="approved", by="ada"))
    assert (late.action, late.by) == ("rejected", "bob") and store.decision(proposed) is None
    # proposed again; an approval made on the rejected batch never approves the new one unseen
    store.save_proposal(proposed, [Item("ZAP70"), Item("ITK")], "ucb", _fit(proposed))
    stale = store.save_decision(Decision(round_id=proposed, action="approved", by="ada", final=["VAV1", "CD3G", "LAT"]))
    assert stale.action == "rejected" and store.decision(proposed) is None
    assert store.get_round("c1", 0).status == "proposed"
    ok = Decision(round_id=proposed, action="edited", by="ada", added=["LAT"], final=["ZAP70", "LAT"])
    assert store.save_decision(ok) is ok and store.get_round("c1", 0).status == "approved"


def test_a_late_decision_on_a_rejected_batch_never_decides_the_new_one(store, proposed):
    """Issue 13 (3): two reviewers saw the same batch; one rejected it and the round was proposed again before the
    other's rejection (or approval) reached the store. The late one names the batch it saw (`seen`) and gets the
    first rejection back: the new batch stays pending, unseen by anyone, with no second rejection."""
    seen = [p.perturbation for p in store.proposals(proposed)]
    first = Decision(round_id=proposed, action="rejected", by="bob")
    assert store.save_decision(first, seen=seen) is first
    store.save_proposal(proposed, [Item("ZAP70"), Item("ITK")], "ucb", _fit(proposed))  # proposed again
    for late in (Decision(round_id=proposed, action="rejected", by="carol"),
                 Decision(round_id=proposed, action="approved", by="dave", final=seen)):
        got = store.save_decision(late, seen=seen)
        assert got is not late and (got.action, got.by) == ("rejected", "bob")
    assert [r.by for r in store.rejections(proposed)] == ["bob"] and store.decision(proposed) is None
    assert store.get_round("c1", 0).status == "proposed"
    assert [p.perturbation for p in store.proposals(proposed)] == ["ZAP70", "ITK"]
    ok = Decision(round_id=proposed, action="rejected", by="carol")
    assert store.save_decision(ok, seen=["ZAP70", "ITK"]) is ok  # a decision made on the new batch is taken


def test_lab_job_submit_and_ingest_idempotent(store, round_id):
    key = "c1/round-0"
    batch = ["VAV1", "CD3G", "BAD1"]
    job = store.begin_lab_job(round_id, "simulator", key, batch)
    again = store.begin_lab_job(round_id, "simulator", key, ["OTHER"])
    assert again.id == job.id and again.perturbations == batch
    assert job.status == "submitting" and _count(store, LabJob) == 1

    store.mark_submitted(key, "sim-123")
    store.mark_submitted(key, "sim-999")  # a repeat never overwrites the first external id
    job = store.lab_job(key)
    assert (job.status, job.external_id) == ("submitted", "sim-123") and job.submitted_at is not None
    assert store.get_round("c1", 0).status == "dispatched"

    def rows():
        return [
            Observation(campaign_id="c1", round_id=round_id, perturbation="VAV1", value=-3.6, replicates=[-3.7, -3.5]),
            Observation(campaign_id="c1", round_id=round_id, perturbation="CD3G", value=-3.2),
            Observation(campaign_id="c1", round_id=round_id, perturbation="BAD1", failed=True, error="not measured"),
        ]

    assert store.ingest("c1", round_id, key, rows()) == 3
    assert store.ingest("c1", round_id, key, rows()) == 0
    assert _count(store, Observation) == 3
    obs = store.observations("c1")
    assert [o.perturbation for o in obs] == ["VAV1", "CD3G"]
    assert obs[0].replicates == [-3.7, -3.5]
    assert len(store.observations("c1", include_failed=True)) == 3
    assert store.lab_job(key).status == "collected"
    r = store.get_round("c1", 0)
    assert r.status == "ingested" and r.finished_at is not None


def test_ingest_skips_perturbations_observed_in_earlier_rounds(store, round_id):
    r1 = store.get_or_create_round("c1", 1).id
    store.begin_lab_job(round_id, "simulator", "k0", ["VAV1"])
    store.begin_lab_job(r1, "simulator", "k1", ["VAV1", "LAT"])
    assert store.ingest("c1", round_id, "k0", [Observation(campaign_id="c1", round_id=round_id, perturbation="VAV1", value=1.0)]) == 1
    new = [Observation(campaign_id="c1", round_id=r1, perturbation=p, value=2.0) for p in ("VAV1", "LAT")]
    assert store.ingest("c1", r1, "k1", new) == 1
    values = {o.perturbation: o.value for o in store.observations("c1")}
    assert values == {"VAV1": 1.0, "LAT": 2.0}


def _set_times(store: Store, round_id: int, created: datetime, finished: datetime, proposed: list[datetime]) -> None:
    """Move a round's stored timestamps (its creation, its end and when each of its proposals was made)."""
    with Session(store.engine) as s:
        r = s.get(Round, round_id)
        r.created_at, r.finished_at = created, finished
        s.add(r)
        records = list(s.exec(select(ProposalRecord).where(ProposalRecord.round_id == round_id).order_by(ProposalRecord.id)))
        assert len(records) == len(proposed)
        for rec, t in zip(records, proposed):
            rec.proposed_at = t
            s.add(rec)
        s.commit()


def test_round_time_is_work_time_without_the_approval_wait(store, proposed):
    """Issue 13 (daily use): a proposal made 10 s into the round, rejected an hour later, proposed again 10 s after
    that and approved two hours later; the lab and ingest take 30 s. The round took 3 h 50 s; its work time is
    50 s and its proposals waited 3 h. Every proposal records when it was made and when and how it was decided."""
    from agent.report import round_decisions, round_times, summarise_round

    t0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
    s = timedelta(seconds=1)
    store.save_decision(Decision(round_id=proposed, action="rejected", by="bob", note="wrong pathway", at=t0 + 3610 * s))
    store.save_proposal(proposed, [Item("ZAP70", 1.0, 0.5), Item("ITK")], "ucb", _fit(proposed), units={"kind": "identity"})
    store.save_decision(Decision(round_id=proposed, action="approved", by="ada", final=["ZAP70", "ITK"],
                                 at=t0 + 3620 * s + timedelta(hours=2)))
    store.begin_lab_job(proposed, "simulator", "c1/round-0", ["ZAP70", "ITK"])
    store.mark_submitted("c1/round-0", "sim-1")
    store.ingest("c1", proposed, "c1/round-0", [Observation(campaign_id="c1", round_id=proposed, perturbation="ZAP70", value=1.5),
                                                Observation(campaign_id="c1", round_id=proposed, perturbation="ITK", value=0.1)])
    records = store.proposal_records(proposed)
    assert [(r.outcome, r.decided_at) for r in records] == [
        ("rejected", t0 + 3610 * s), ("approved", t0 + 3620 * s + timedelta(hours=2))]
    assert [r.units for r in records] == [{}, {"kind": "identity"}]

    _set_times(store, proposed, t0, t0 + 3650 * s + timedelta(hours=2), [t0 + 10 * s, t0 + 3620 * s])
    r = store.get_round("c1", 0)
    assert round_times(store, r) == {"seconds": pytest.approx(50.0), "approval_wait_seconds": pytest.approx(3 * 3600.0)}
    row = summarise_round(store, "c1", 0)
    assert row["seconds"] == pytest.approx(50.0) and row["approval_wait_seconds"] == pytest.approx(10800.0)
    said = round_decisions(store, r)
    assert [(d["action"], d["by"], d["note"], d["waited_seconds"]) for d in said] == [
        ("rejected", "bob", "wrong pathway", pytest.approx(3600.0)), ("approved", "ada", "", pytest.approx(7200.0))]
    assert said[0]["dropped"] == ["VAV1", "CD3G", "LAT"] and said[1]["when"] == "2026-03-02 12:00 UTC"

    # a round proposed before proposal records were kept: the wait is estimated from its decision and fit times
    with Session(store.engine) as ses:
        for rec in ses.exec(select(ProposalRecord)):
            ses.delete(rec)
        ses.commit()
    est = round_times(store, r)  # fit 0.5 s + select 0 s after the round started; decided at 3620 s + 2 h
    assert est["approval_wait_seconds"] == pytest.approx(3620 - 0.5 + 7200.0)
    assert est["seconds"] == pytest.approx(3650 + 7200.0 - est["approval_wait_seconds"])
