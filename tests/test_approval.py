"""Scientist approval: the loop pauses after proposing, a validated decision resumes it."""

from __future__ import annotations

import os
import textwrap

import pytest
from forked import perturbloop

from agent.approval import decide, pending_proposal, pending_round
from agent.context import build_context
from agent.runner import run_campaign
from perturbloop.config import load_config, parse_config
from perturbloop.errors import PerturbloopError, UnknownGeneError
from perturbloop.store import Store


def _cfg(slice_csv):
    return parse_config({"name": "appr", "rounds": 2, "batch_size": 8, "approval": "required",
                         "data": {"screen": str(slice_csv)}})


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.slow
def test_pause_edit_and_resume(backend, slice_csv, data_dir, tmp_path, request):
    """On SQLite, and on PostgreSQL (store and LangGraph checkpoints in the same database)."""
    url = str(tmp_path / "pl.db") if backend == "sqlite" else request.getfixturevalue("fresh_postgres_url")
    store = Store(url)
    cfg = _cfg(slice_csv)
    res = run_campaign(cfg, store, data_dir)
    assert res.status == "awaiting_approval"
    assert store.get_campaign("appr").status == "awaiting_approval"
    r, props = pending_proposal(store, "appr")
    assert r.index == 0 and len(props) == 8 and not store.lab_jobs(r.id)

    # running again (e.g. a scheduled run) keeps waiting, and submits nothing
    assert run_campaign(cfg, store, data_dir).status == "awaiting_approval"
    assert not store.lab_jobs(r.id)

    ctx = build_context(cfg, store, data_dir)
    proposed = [p.perturbation for p in props]
    spare = next(g for g in ctx.space.labels if g not in proposed)
    with pytest.raises(UnknownGeneError, match="NOTAGENE9"):
        decide(store, "appr", ctx.candidate_labels(), add=["NOTAGENE9"], data_dir=data_dir)
    with pytest.raises(PerturbloopError, match="not in the pending proposal"):
        decide(store, "appr", ctx.candidate_labels(), drop=[spare], data_dir=data_dir)
    assert store.decision(r.id) is None  # refused edits leave the store untouched

    decision = decide(store, "appr", ctx.candidate_labels(), drop=[proposed[0]], add=[spare.lower()], note="swap", by="ada",
                      data_dir=data_dir)
    assert decision["action"] == "edited" and decision["final"] == proposed[1:] + [spare]
    res = run_campaign(cfg, store, data_dir, resume=decision, context=ctx)
    assert res.status == "awaiting_approval"  # round 2 proposed, waiting again
    d = store.decision(r.id)
    assert (d.action, d.by, d.note, d.dropped, d.added) == ("edited", "ada", "swap", [proposed[0]], [spare])
    (job,) = store.lab_jobs(r.id)
    assert job.perturbations == decision["final"]  # what ran is the edited batch; the proposal is kept too
    assert [p.perturbation for p in store.proposals(r.id)] == proposed
    observed = {o.perturbation for o in store.observations("appr")}
    assert observed == set(decision["final"])

    with pytest.raises(PerturbloopError, match="already measured"):
        decide(store, "appr", ctx.candidate_labels(), add=[proposed[1]], data_dir=data_dir)
    again = run_campaign(cfg, store, data_dir, resume=decide(store, "appr", ctx.candidate_labels(), reject=True,
                                                             data_dir=data_dir), context=ctx)
    assert again.status == "awaiting_approval"  # a rejection does not use up round 2: it is proposed again
    r2 = store.rounds("appr")[1]
    assert r2.status == "proposed" and store.decision(r2.id) is None and len(store.rejections(r2.id)) == 1
    final = run_campaign(cfg, store, data_dir, resume=decide(store, "appr", ctx.candidate_labels(), data_dir=data_dir),
                         context=ctx)
    assert final.status == "finished" and store.rounds("appr")[1].status == "ingested"


@pytest.mark.slow
def test_cli_review_and_approve(slice_csv, data_dir, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent(f"""
        name = "cli-appr"
        rounds = 1
        batch_size = 6
        approval = "required"
        [data]
        screen = "{slice_csv}"
    """))
    store = tmp_path / "pl.db"
    env = dict(os.environ)

    def cli(*args):
        return perturbloop(*args, "--store", str(store), env=env, cwd=tmp_path, timeout=300)  # tests/forked.py

    ran = cli("run", str(cfg), "--no-baseline", "--data-dir", str(data_dir))
    assert ran.returncode == 0 and "awaiting_approval" in ran.stdout, ran.stdout + ran.stderr
    shown = cli("review", "cli-appr")
    assert shown.returncode == 0 and "awaiting approval (6 perturbations)" in shown.stdout
    bad = cli("approve", "cli-appr", "--add", "NOTAGENE9", "--data-dir", str(data_dir))
    assert bad.returncode == 2 and "NOTAGENE9" in bad.stderr
    r, props = pending_proposal(Store(str(store)), "cli-appr")
    vetoed = props[0].perturbation
    ok = cli("approve", "cli-appr", "--by", "ada", "--veto", vetoed, "--note", "toxic", "--data-dir", str(data_dir))
    assert ok.returncode == 0 and "edited by ada: 5 perturbations" in ok.stdout and "finished" in ok.stdout, ok.stderr
    assert f"vetoed for the rest of the campaign: {vetoed}" in ok.stdout
    assert [(v.perturbation, v.by, v.note) for v in Store(str(store)).vetoes("cli-appr")] == [(vetoed, "ada", "toxic")]


def test_refused_approve_loads_neither_pandas_nor_torch(slice_csv, data_dir, tmp_path, fresh_python):
    """Issue 13 (every command answers in seconds): an edit naming an unknown gene is refused, exit 2, naming it,
    with the screen's genes read from what the run kept in the cache (no pandas, no torch) and nothing stored."""
    store = Store(str(tmp_path / "pl.db"))
    cfg = parse_config({"name": "fast-no", "rounds": 1, "batch_size": 6, "approval": "required",
                        "data": {"screen": str(slice_csv)}, "design": {"features": ["go"]}})
    assert run_campaign(cfg, store, data_dir).status == "awaiting_approval"
    r, _ = pending_proposal(store, "fast-no")
    out = fresh_python("import atexit, sys; atexit.register(lambda: print('loaded:', *[m for m in ('pandas', 'torch') "
                       "if m in sys.modules])); from perturbloop.cli import main; sys.argv = ['perturbloop', 'approve', "
                       f"'fast-no', '--add', 'NOTAGENE9', '--store', {str(tmp_path / 'pl.db')!r}, '--data-dir', "
                       f"{str(data_dir)!r}]; main()", cwd=tmp_path)
    assert out.returncode == 2 and "NOTAGENE9" in out.stderr, out.stdout + out.stderr
    assert out.stdout.strip() == "loaded:", out.stdout
    assert store.decision(r.id) is None and not store.lab_jobs(r.id)


def test_approval_example_config_requires_approval():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "il2_approval.toml")
    assert cfg.approval == "required" and cfg.data.screen == "schmidt2021_il2"


def test_reject_does_not_use_up_the_round_and_the_next_proposal_differs(slice_csv, data_dir, tmp_path):
    """Issue 13 (8): a rejected proposal is no measured round; the round is proposed again without the
    rejected perturbations, and the rejection (who, why, the batch) is kept in the store."""
    store = Store(str(tmp_path / "pl.db"))
    cfg = _cfg(slice_csv)
    ctx = build_context(cfg, store, data_dir)
    run_campaign(cfg, store, data_dir, context=ctx)
    r, props = pending_proposal(store, "appr")
    first = [p.perturbation for p in props]
    late = decide(store, "appr", ctx.candidate_labels(), reject=True, by="carol", data_dir=data_dir)  # on `first` too

    res = run_campaign(cfg, store, data_dir, context=ctx, resume=decide(
        store, "appr", ctx.candidate_labels(), reject=True, note="off-target guides", by="ada", data_dir=data_dir))
    assert res.status == "awaiting_approval"
    again, props2 = pending_proposal(store, "appr")
    assert again.index == 0 and again.id == r.id  # the same round, proposed again
    second = [p.perturbation for p in props2]
    assert len(second) == 8 and not set(second) & set(first)
    (rej,) = store.rejections(r.id)
    assert (rej.by, rej.note, rej.perturbations) == ("ada", "off-target guides", first)
    assert not store.lab_jobs(r.id) and not store.observations("appr", include_failed=True)
    # carol's rejection of the first batch, arriving now, never rejects the second one unseen
    assert run_campaign(cfg, store, data_dir, context=ctx, resume=late).status == "awaiting_approval"
    assert [p.perturbation for p in pending_proposal(store, "appr")[1]] == second
    assert [x.by for x in store.rejections(r.id)] == ["ada"]

    # both rounds are still to be measured: approving twice finishes the campaign, 16 perturbations measured
    res = run_campaign(cfg, store, data_dir, context=ctx, resume=decide(store, "appr", ctx.candidate_labels(),
                                                                        data_dir=data_dir))
    assert res.status == "awaiting_approval" and pending_proposal(store, "appr")[0].index == 1
    res = run_campaign(cfg, store, data_dir, context=ctx, resume=decide(store, "appr", ctx.candidate_labels(),
                                                                        data_dir=data_dir))
    assert res.status == "finished"
    assert [x.status for x in store.rounds("appr")] == ["ingested", "ingested"]
    assert len(store.observations("appr", include_failed=True)) == 16


def test_veto_rules_a_gene_out_and_a_dropped_gene_comes_back_marked(slice_csv, data_dir, tmp_path):
    """Issue 13 (9): dropping is "not now" (a dropped gene may come back, marked as dropped in its rationale);
    a veto is "never": recorded with who and why, excluded from every later proposal, refused in --add."""
    import pandas as pd

    genes = list(pd.read_csv(slice_csv)["Gene"][:12])
    store = Store(str(tmp_path / "pl.db"))
    cfg = parse_config({"name": "appr", "rounds": 2, "batch_size": 8, "approval": "required",
                        "data": {"screen": str(slice_csv)}, "design": {"genes": genes}})
    ctx = build_context(cfg, store, data_dir)
    run_campaign(cfg, store, data_dir, context=ctx)
    r, props = pending_proposal(store, "appr")
    first = [p.perturbation for p in props]
    spare = next(g for g in ctx.candidate_labels() if g not in first)
    with pytest.raises(UnknownGeneError, match="NOTAGENE9"):
        decide(store, "appr", ctx.candidate_labels(), veto=["NOTAGENE9"], data_dir=data_dir)
    with pytest.raises(PerturbloopError, match="--add and --veto"):
        decide(store, "appr", ctx.candidate_labels(), add=[spare], veto=[spare], data_dir=data_dir)
    assert not store.vetoes("appr") and store.decision(r.id) is None  # refused: nothing written

    d = decide(store, "appr", ctx.candidate_labels(), drop=first[1:5], veto=[first[0].lower()], note="toxic", by="ada",
               data_dir=data_dir)
    assert d["vetoed"] == [first[0]] and d["dropped"] == first[:5] and d["final"] == first[5:]
    res = run_campaign(cfg, store, data_dir, context=ctx, resume=d)
    assert res.status == "awaiting_approval"
    (v,) = store.vetoes("appr")
    assert (v.perturbation, v.by, v.note) == (first[0], "ada", "toxic")
    with pytest.raises(PerturbloopError, match=f"vetoed in this campaign: {first[0]}"):
        decide(store, "appr", ctx.candidate_labels(), add=[first[0]], data_dir=data_dir)

    # 12 genes - 3 measured - 1 vetoed: round 2 proposes all 8 left, the 4 dropped ones marked as such
    _, props = pending_proposal(store, "appr")
    by_label = {p.perturbation: p for p in props}
    assert first[0] not in by_label and set(first[1:5]) <= set(by_label)
    assert all(by_label[g].rationale.startswith("dropped by ada in round 1 (toxic)") for g in first[1:5])
    assert not any(p.rationale.startswith("dropped") for p in props if p.perturbation not in first)


def _grn_approval() -> dict:
    """The response-campaign tests' synthetic pair world, with approval required."""
    from test_response_campaign import GRN

    return {**GRN, "name": "grn-appr", "initial": 6, "rounds": 1, "batch_size": 4, "approval": "required"}


def test_reject_and_veto_in_a_pair_campaign_initial_design(data_dir, tmp_path):
    """Issues 13 (8, 9) for a response campaign: a rejected initial design is drawn again without its pairs
    (and never from the held-out ones); a vetoed pair is left out of the new draw."""
    from agent.context import build_context

    store = Store(str(tmp_path / "pl.db"))
    cfg = parse_config(_grn_approval())
    ctx = build_context(cfg, store, data_dir)
    assert run_campaign(cfg, store, data_dir, context=ctx).status == "awaiting_approval"
    r, props = pending_proposal(store, "grn-appr")
    first = [p.perturbation for p in props]
    other = next(lab for lab in ctx.candidate_labels() if lab not in first and lab not in ctx.split.test)
    a, b = other.split("+")
    d = decide(store, "grn-appr", ctx.candidate_labels(), reject=True, veto=[f"{b}+{a}"], note="bad guides", by="ada",
               data_dir=data_dir)
    assert d["vetoed"] == [other]
    assert run_campaign(cfg, store, data_dir, context=ctx, resume=d).status == "awaiting_approval"
    again, props2 = pending_proposal(store, "grn-appr")
    second = [p.perturbation for p in props2]
    assert again.index == 0 and len(second) == len(first) == 6
    assert not set(second) & (set(first) | {other} | set(ctx.split.test))
    assert [rej.perturbations for rej in store.rejections(r.id)] == [first]


def test_checkpoints_of_a_deleted_store_are_not_followed(slice_csv, data_dir, tmp_path):
    """Issue 13, defect 1: the store deleted while its checkpoints stay, the campaign paused in round 2. The
    next run must follow the store (nothing measured: round 1 again), not the checkpoint (round 2, with round 1
    missing from the store); the stale checkpoints are dropped."""
    cfg = parse_config({"name": "stale", "rounds": 3, "batch_size": 6, "approval": "required",
                        "data": {"screen": str(slice_csv)}})
    db = tmp_path / "pl.db"
    store = Store(str(db))
    assert run_campaign(cfg, store, data_dir).status == "awaiting_approval"
    ctx = build_context(cfg, store, data_dir)
    res = run_campaign(cfg, store, data_dir, resume=decide(store, "stale", ctx.candidate_labels(), data_dir=data_dir),
                       context=ctx)
    assert res.status == "awaiting_approval" and pending_round(store, "stale").index == 1
    db.unlink()
    store = Store(str(db))
    res = run_campaign(cfg, store, data_dir)
    assert res.status == "awaiting_approval"
    r, props = pending_proposal(store, "stale")  # the pause is the store's: round 1, proposed again
    assert r.index == 0 and len(props) == 6 and [x.index for x in store.rounds("stale")] == [0]
    ctx = build_context(cfg, store, data_dir)
    done = run_campaign(cfg, store, data_dir, resume=decide(store, "stale", ctx.candidate_labels(), data_dir=data_dir),
                        context=ctx)
    assert done.status == "awaiting_approval" and pending_round(store, "stale").index == 1
    assert [len(store.lab_jobs(x.id)) for x in store.rounds("stale")] == [1, 0]


def test_a_decision_after_lost_checkpoints_is_applied(slice_csv, data_dir, tmp_path):
    """The checkpoints lost (deleted) while the store waits for a decision: approving walks the loop back to
    the store's pause and records the decision there, once."""
    cfg = parse_config({"name": "lost", "rounds": 2, "batch_size": 6, "approval": "required",
                        "data": {"screen": str(slice_csv)}})
    store = Store(str(tmp_path / "pl.db"))
    assert run_campaign(cfg, store, data_dir).status == "awaiting_approval"
    (tmp_path / "pl.checkpoints.sqlite").unlink()
    ctx = build_context(cfg, store, data_dir)
    res = run_campaign(cfg, store, data_dir, resume=decide(store, "lost", ctx.candidate_labels(), data_dir=data_dir),
                       context=ctx)
    assert res.status == "awaiting_approval" and pending_round(store, "lost").index == 1
    r0 = store.rounds("lost")[0]
    assert store.decision(r0.id).action == "approved" and len(store.lab_jobs(r0.id)) == 1


@pytest.fixture
def on_a_gene_list(slice_csv, data_dir, tmp_path):
    """A campaign whose `design.genes` names a file of 120 real genes, paused at its first proposal:
    `(config, store, gene_file, genes)`."""
    import pandas as pd

    genes = pd.read_csv(slice_csv)["Gene"].tolist()[:120]
    gene_file = tmp_path / "genes.txt"
    gene_file.write_text("\n".join(genes) + "\n")
    cfg = parse_config({"name": "files", "rounds": 2, "batch_size": 6, "approval": "required",
                        "data": {"screen": str(slice_csv)}, "design": {"genes": str(gene_file)}})
    store = Store(str(tmp_path / "pl.db"))
    assert run_campaign(cfg, store, data_dir).status == "awaiting_approval"
    return cfg, store, gene_file, genes


@pytest.mark.slow
def test_a_file_changed_behind_the_campaign_is_refused(on_a_gene_list, data_dir):
    """Issue 13, defect 2: the gene list a config names is edited between proposal and approval. Approving must
    refuse, naming the file, and store nothing (before: the approved genes were stored as failed)."""
    from perturbloop.errors import StoreError

    cfg, store, gene_file, genes = on_a_gene_list
    r0, props = pending_proposal(store, "files")
    proposed = [p.perturbation for p in props]
    ctx = build_context(cfg, store, data_dir)
    decision = decide(store, "files", ctx.candidate_labels(), data_dir=data_dir)
    gene_file.write_text("\n".join(g for g in genes if g not in proposed) + "\n")  # the proposed genes edited out
    with pytest.raises(StoreError, match=r"design.genes .*genes.txt.* changed since the campaign started"):
        run_campaign(cfg, store, data_dir, resume=decision, context=ctx)
    assert store.decision(r0.id) is None and store.observations("files", include_failed=True) == []
    with pytest.raises(StoreError, match="design.genes"):
        run_campaign(cfg, store, data_dir)
    gene_file.write_text("\n".join(genes) + "\n")  # restored: the campaign goes on
    res = run_campaign(cfg, store, data_dir, resume=decision, context=ctx)
    assert res.status == "awaiting_approval" and store.decision(r0.id).action == "approved"
    assert not any(o.failed for o in store.observations("files", include_failed=True))


def test_approve_and_the_web_refuse_a_changed_file_before_any_decision(on_a_gene_list, data_dir):
    """Issue 13, defect 2, as the reviewer meets it: the gene list edited while a proposal waits. `approve` answers
    one error line naming the file, without first announcing "approved by ..."; the web API answers 400 naming it
    and records no decision (before: it stored the approval and then failed to advance)."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from agent.web import create_app
    from perturbloop.cli import app

    _, store, gene_file, genes = on_a_gene_list
    r0, props = pending_proposal(store, "files")
    gene_file.write_text("\n".join(g for g in genes if g not in {p.perturbation for p in props}) + "\n")

    out = CliRunner().invoke(app, ["approve", "files", "--by", "ada", "--store", store.url,
                                   "--data-dir", str(data_dir)])
    assert out.exit_code == 2 and "approved" not in out.output, out.output
    assert "error: " in out.output and "design.genes" in out.output and "genes.txt" in out.output
    assert store.decision(r0.id) is None

    token = "s3cret-review-token"
    client = TestClient(create_app(store, token, str(data_dir)), headers={"Authorization": f"Bearer {token}"})
    proposal = client.get("/api/campaigns/files/proposal").json()["proposal"]
    r = client.post("/api/campaigns/files/decision", json={"by": "ada", "proposal": proposal})
    assert r.status_code == 400 and "design.genes" in r.json()["detail"], r.text
    assert store.decision(r0.id) is None and pending_round(store, "files").id == r0.id
