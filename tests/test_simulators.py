"""Screen replay on the real IL2 screen, and the SimulatorLab adapter around it."""

from __future__ import annotations

import pandas as pd
import pytest

from lab_adapters import JobRef, LabError, LabResult, SimulatorLab
from perturbloop.data import Screen
from simulators import ScreenReading, ScreenReplay


def _donor_genes(screen, n: int = 40) -> list[str]:
    """Genes whose two donors disagree clearly, so the chosen donor is identifiable from the value."""
    reps = screen.replicates
    diff = (reps["rep1"] - reps["rep2"]).abs()
    return list(diff[diff > 0.2].sort_index().index[:n])


def test_run_returns_screen_score(il2_screen):
    world = ScreenReplay(il2_screen)
    out = world.run(["VAV1", "CD3G", "LCP2"])
    assert [r.perturbation for r in out] == ["VAV1", "CD3G", "LCP2"]
    for r in out:
        assert isinstance(r, ScreenReading) and r.error is None
        assert r.value == pytest.approx(float(il2_screen.scores[r.perturbation]))
        assert r.replicates == pytest.approx(il2_screen.replicates.loc[r.perturbation].tolist())
    assert out[0].value < -2  # VAV1 knock-down strongly lowers IL2


def test_donor_mode_returns_one_replicate_deterministically(il2_screen):
    genes = _donor_genes(il2_screen)
    assert len(genes) == 40
    a = ScreenReplay(il2_screen, noise="donor", seed=7).run(genes)
    b = ScreenReplay(il2_screen, noise="donor", seed=7).run(genes[::-1])[::-1]
    donors = []
    for ra, rb in zip(a, b):
        reps = il2_screen.replicates.loc[ra.perturbation]
        assert ra.value in (reps["rep1"], reps["rep2"])
        assert ra.value == rb.value  # same gene + seed -> same donor, whatever the batch order
        assert ra.value != pytest.approx(float(il2_screen.scores[ra.perturbation]))
        donors.append(0 if ra.value == reps["rep1"] else 1)
    assert 0 < sum(donors) < len(donors)  # both donors are drawn
    c = ScreenReplay(il2_screen, noise="donor", seed=8).run(genes)
    assert [r.value for r in c] != [r.value for r in a]  # the seed matters


def test_donor_mode_needs_replicates():
    s = Screen("toy", pd.Series({"A": 1.0, "B": 2.0}))
    with pytest.raises(ValueError, match="'toy'.*replicates"):
        ScreenReplay(s, noise="donor")
    assert ScreenReplay(s).run(["A"])[0].replicates == []


def test_unknown_gene_and_pair_give_errors(il2_screen):
    world = ScreenReplay(il2_screen)
    out = world.run(["NOTAGENE1", "VAV1+CD3G", "VAV1"])
    assert out[0].value is None and "NOTAGENE1" in out[0].error and "schmidt2021_il2" in out[0].error
    assert out[1].value is None and "single genes" in out[1].error
    assert out[2].error is None and out[2].value is not None


def test_hits_size_and_threshold(il2_screen):
    world = ScreenReplay(il2_screen, hit_fraction=0.05)
    n = len(il2_screen.scores)
    assert len(world.hits) == round(0.05 * n)
    assert world.hits == frozenset(il2_screen.hits(0.05))
    abs_scores = il2_screen.scores.abs()
    assert abs_scores[list(world.hits)].min() == pytest.approx(world.hit_threshold)
    assert (abs_scores.drop(index=list(world.hits)) <= world.hit_threshold).all()
    assert world.genes == il2_screen.genes


def test_hits_exclusion(il2_screen):
    top = list(il2_screen.scores.abs().sort_values(ascending=False).index[:10])
    world = ScreenReplay(il2_screen, exclude_from_hits=set(top) | {"NOT_IN_SCREEN"})
    assert not world.hits & set(top)
    assert len(world.hits) == round(0.05 * (len(il2_screen.scores) - 10))
    assert world.run([top[0]])[0].value is not None  # excluded from hits, still measurable


def test_truth(il2_screen):
    world = ScreenReplay(il2_screen)
    t = world.truth(["VAV1", "NOTAGENE1"])
    assert t["VAV1"] == il2_screen.scores["VAV1"] and pd.isna(t["NOTAGENE1"])


# --- SimulatorLab --------------------------------------------------------------------------------

def test_submit_is_idempotent_on_round_key(il2_screen):
    lab = SimulatorLab(ScreenReplay(il2_screen))
    job = lab.submit("c1/round-0", ["VAV1", "CD3G"])
    again = lab.submit("c1/round-0", ["VAV1", "CD3G"])
    assert isinstance(job, JobRef) and again == job
    assert job.adapter == "simulator" and job.idempotency_key == "c1/round-0"
    assert lab.submissions == 1
    other = lab.submit("c1/round-1", ["LAT"])
    assert other.external_id != job.external_id and lab.submissions == 2


def test_same_key_different_batch_refused(il2_screen):
    lab = SimulatorLab(ScreenReplay(il2_screen))
    lab.submit("k", ["VAV1", "CD3G"])
    with pytest.raises(ValueError, match="'k'.*different batch"):
        lab.submit("k", ["VAV1", "LAT"])
    assert lab.submissions == 1


def test_poll_and_collect_per_perturbation(il2_screen):
    lab = SimulatorLab(ScreenReplay(il2_screen), turnaround_polls=1)
    job = lab.submit("k", ["VAV1", "NOTAGENE1", "CD3G"])
    assert lab.poll(job) == "running"
    assert lab.poll(job) == "complete"
    res = lab.collect(job)
    assert list(res) == ["VAV1", "NOTAGENE1", "CD3G"]
    assert isinstance(res["VAV1"], LabResult) and isinstance(res["CD3G"], LabResult)
    assert res["VAV1"].value == pytest.approx(float(il2_screen.scores["VAV1"]))
    assert len(res["VAV1"].replicates) == 2
    assert isinstance(res["NOTAGENE1"], LabError) and "NOTAGENE1" in res["NOTAGENE1"].reason


def test_unknown_job_is_refused(il2_screen):
    lab = SimulatorLab(ScreenReplay(il2_screen))
    with pytest.raises(KeyError, match="sim-unknown"):
        lab.poll(JobRef("simulator", "sim-unknown", "k"))
