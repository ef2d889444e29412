"""Response campaigns through the HTTP lab: the reference server (`lab_adapters.http_server`) serves a
response world (Norman 2019 gene pairs, Papalexi Perturb-seq) and returns response vectors in its results
JSON; the campaign, with approval of every batch, ingests them as its observations and runs to its end."""

from __future__ import annotations

import re

import numpy as np
import pytest

from agent.approval import decide, pending_proposal
from agent.context import build_context
from agent.runner import run_campaign
from lab_adapters.http_server import LabServer
from perturbloop.config import parse_config
from perturbloop.errors import LabResultError, PerturbloopError, UnknownGeneError
from perturbloop.store import Store
from simulators.response_worlds import build_world


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Small models: one thread."""


def _pair_config(url: str) -> dict:
    return {
        "name": "norman-http", "objective": "maximize", "initial": 20, "rounds": 2, "batch_size": 10,
        "approval": "required",
        "world": {"kind": "pair_fitness", "dataset": "norman2019_pairs", "readout": "gi"},
        "design": {"space": "pairs", "features": ["none"], "max_pairs": 300},
        "surrogate": {"kind": "linear"},
        "acquisition": {"kind": "program", "absolute": True},
        "lab": {"kind": "http", "url": url, "retries": 0},
    }


@pytest.fixture(scope="module")
def pair_world(data_dir):
    """The Norman 2019 GI world, as the lab serves it (built from the campaign's own config)."""
    return build_world(parse_config(_pair_config("http://127.0.0.1:9")), data_dir)


@pytest.mark.slow
def test_pair_campaign_through_the_http_lab_with_approval(tmp_path, data_dir, pair_world):
    with LabServer(pair_world, auto_release=False) as server:
        config = parse_config(_pair_config(server.url))
        store = Store(str(tmp_path / "store.db"))
        ctx = build_context(config, store, data_dir)  # one context for every call, as `perturbloop serve` keeps it
        candidates = ctx.candidate_labels()
        assert len(candidates) == 300 and all(c.count("+") == 1 for c in candidates)

        # round 1 (the initial design) waits for approval
        assert run_campaign(config, store, data_dir, context=ctx).status == "awaiting_approval"
        r, props = pending_proposal(store, config.name)
        assert r.index == 0 and len(props) == 20
        proposed = [p.perturbation for p in props]
        other = next(c for c in candidates if c not in proposed)
        a, b = other.split("+")

        # bad edits name the perturbation and store nothing
        with pytest.raises(PerturbloopError, match=rf"a single gene in a pairs campaign.*{a}"):
            decide(store, config.name, candidates, add=[a], data_dir=data_dir)
        with pytest.raises(UnknownGeneError, match="NOTAGENE1"):
            decide(store, config.name, candidates, add=[f"{a}+NOTAGENE1"], data_dir=data_dir)
        assert store.lab_job(f"{config.name}/round-0") is None
        decision = decide(store, config.name, candidates, drop=[proposed[0]], add=[f"{b}+{a}"], by="ada",
                          data_dir=data_dir)
        batch = [*proposed[1:], other]
        assert decision["final"] == batch

        res = run_campaign(config, store, data_dir, resume=decision, context=ctx)
        assert res.status == "waiting_for_lab"
        job = server.job_for(f"{config.name}/round-0")
        assert job.perturbations == batch

        # a response vector of the wrong length is refused, naming it; nothing is ingested
        good = dict(job.readings[other])  # a one-readout world answers with the value
        job.readings[other]["response"] = [0.5, 1.5]
        server.release(job.job_id)
        with pytest.raises(LabResultError, match=re.escape(f"{other} came back with a response of 2 values; "
                                                           "this campaign reads out 1 genes (gi)")):
            run_campaign(config, store, data_dir, context=ctx)
        assert store.observations(config.name, include_failed=True) == [] and store.responses(config.name) == {}
        assert store.get_round(config.name, 0).status != "ingested"
        assert store.lab_job(f"{config.name}/round-0").status != "collected"

        # the lab's vectors: each pair's GI score, stored as its response and its value
        job.readings[other] = good
        server.auto_release = True
        res = run_campaign(config, store, data_dir, context=ctx)
        approved = [batch]
        while res.status == "awaiting_approval":
            _, props = pending_proposal(store, config.name)
            d = decide(store, config.name, candidates, by="ada", data_dir=data_dir)
            assert d["action"] == "approved" and len(props) == 10
            approved.append(d["final"])
            res = run_campaign(config, store, data_dir, resume=d, context=ctx)

    assert res.status == "finished" and store.get_campaign(config.name).status == "finished"
    assert [len(b) for b in approved] == [20, 10, 10]
    assert [j.perturbations for j in server.jobs.values()] == approved
    run = [lab for b in approved for lab in b]
    assert len(set(run)) == len(run) and set(run) <= set(candidates)
    truth = dict(zip(run, pair_world.truth(run)[:, 0]))
    responses = store.responses(config.name)
    assert responses.keys() == set(run)
    assert all(responses[lab] == pytest.approx([truth[lab]]) for lab in run)
    obs = store.observations(config.name)
    assert len(obs) == len(run) and all(o.value == pytest.approx(truth[o.perturbation]) for o in obs)


def _perturbseq_config(reference, url: str) -> dict:
    return {
        "name": "papalexi-http", "objective": "learn_response", "initial": 3, "rounds": 1, "batch_size": 2,
        "world": {"kind": "perturbseq", "dataset": str(reference), "key": "target", "control": "non-targeting"},
        "design": {"features": ["expression_pca"]},
        "surrogate": {"kind": "linear"},
        "lab": {"kind": "http", "url": url, "retries": 0},
    }


def test_perturbseq_responses_through_the_http_lab(tmp_path, data_dir, papalexi_slice):
    world = build_world(parse_config(_perturbseq_config(papalexi_slice, "http://127.0.0.1:9")), data_dir)
    with LabServer(world) as server:
        config = parse_config(_perturbseq_config(papalexi_slice, server.url))
        store = Store(str(tmp_path / "store.db"))
        res = run_campaign(config, store, data_dir)
    assert res.status == "finished"
    sent = {p: job.readings[p]["response"] for job in server.jobs.values() for p in job.perturbations}
    assert len(sent) == 5 and all(len(v) == len(world.genes) == 299 for v in sent.values())
    responses = store.responses(config.name)
    assert responses.keys() == sent.keys()
    assert all(responses[p] == pytest.approx(sent[p]) for p in sent)
    obs = store.observations(config.name)  # no value sent: the vector's L2 norm
    assert len(obs) == 5 and all(o.value == pytest.approx(float(np.linalg.norm(sent[o.perturbation]))) for o in obs)
    # a knockout's pseudobulk LFC: STAT1's lowers STAT1 (when run)
    if "STAT1" in sent and "STAT1" in world.genes:
        assert responses["STAT1"][list(world.genes).index("STAT1")] < 0
