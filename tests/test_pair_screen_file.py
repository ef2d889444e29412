"""A pair screen from a file (`perturbloop benchmark --screen pairs.csv`): the reader's errors, and the benchmark
end to end on a small slice of the Norman 2019 GI map written in both file formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from perturbloop.errors import ScreenFormatError
from simulators.pair_replay import read_norman2019
from simulators.pair_screen import PairScreenWorld, read_pair_hits, read_pair_screen

N_GENES = 16  # 120 pairs: a tiny campaign (2 rounds x 8 pairs)


@pytest.fixture(scope="module")
def norman_slice(data_dir) -> tuple[pd.Series, pd.DataFrame]:
    """The singles and the pairs (GI score) among the first 16 Norman genes."""
    singles, pairs, _ = read_norman2019(data_dir)
    genes = set(singles.index[:N_GENES])
    keep = [lab for lab in pairs.index if set(lab.split("+")) <= genes]
    return singles[sorted(genes)], pairs.loc[keep]


def _write_columns(path: Path, singles: pd.Series, pairs: pd.DataFrame) -> Path:
    """gene_a,gene_b,score with B before A (order must not matter) and the singles as gene_b-less rows."""
    ab = [lab.split("+") for lab in pairs.index]
    rows = [(b, a, gi) for (a, b), gi in zip(ab, pairs["gi"])] + [(g, "", f) for g, f in singles.items()]
    pd.DataFrame(rows, columns=["gene_a", "gene_b", "score"]).to_csv(path, index=False)
    return path


def _write_labels(path: Path, pairs: pd.DataFrame) -> Path:
    pd.DataFrame({"label": pairs.index, "score": pairs["gi"].to_numpy()}).to_csv(path, index=False)
    return path


def test_both_formats_read_the_same_pairs(tmp_path, norman_slice):
    singles, pairs = norman_slice
    a = read_pair_screen(_write_columns(tmp_path / "cols.csv", singles, pairs))
    b = read_pair_screen(_write_labels(tmp_path / "labels.csv", pairs))
    assert list(a.pairs.index) == sorted(pairs.index) == list(b.pairs.index)
    assert np.allclose(a.pairs.to_numpy(), pairs["gi"].sort_index().to_numpy())
    assert np.allclose(a.pairs.to_numpy(), b.pairs.to_numpy())
    assert a.singles.to_dict() == pytest.approx(singles.to_dict()) and b.singles.empty
    world = PairScreenWorld(a)
    lab = pairs.index[3]
    b_then_a = "+".join(reversed(lab.split("+")))
    assert world.measure([b_then_a])[lab].response[0] == pytest.approx(pairs.loc[lab, "gi"])


def test_bad_files_name_the_problem(tmp_path):
    def csv(text: str) -> Path:
        p = tmp_path / f"f{len(list(tmp_path.iterdir()))}.csv"
        p.write_text(text)
        return p

    with pytest.raises(ScreenFormatError, match="no 'score' column"):
        read_pair_screen(csv("gene_a,gene_b,gi\nA,B,1\nA,C,2\n"))
    with pytest.raises(ScreenFormatError, match="has gene_a but not gene_b"):
        read_pair_screen(csv("gene_a,x,score\nA,B,1\n"))
    with pytest.raises(ScreenFormatError, match=r"line 3: malformed label 'A\+B\+C'"):
        read_pair_screen(csv("label,score\nA+B,1\nA+B+C,2\n"))
    with pytest.raises(ScreenFormatError, match="line 2: malformed label 'KRAS\\+kras'"):
        read_pair_screen(csv("label,score\nKRAS+kras,1\nA+B,2\n"))
    with pytest.raises(ScreenFormatError, match=r"A\+B is listed twice with different scores: line 2 \(1\) and line 4 \(3\)"):
        read_pair_screen(csv("gene_a,gene_b,score\nA,B,1\nA,C,2\nB,A,3\n"))
    with pytest.raises(ScreenFormatError, match="line 3: score 'x'"):
        read_pair_screen(csv("label,score\nA+B,1\nA+C,x\n"))
    same = read_pair_screen(csv("label,score\nA+B,1\nB+A,1\nA+C,2\n"))  # the same value twice is one pair
    assert list(same.pairs.index) == ["A+B", "A+C"]
    with pytest.raises(ScreenFormatError, match=r"1 pair\(s\) not in the screen file: A\+D"):
        read_pair_hits(csv("pair\nB+A\nD+A\n"), same.pairs.index)
    with pytest.raises(ScreenFormatError, match="line 1: 'A' is one gene"):
        read_pair_hits(csv("A\n"), same.pairs.index)
    assert read_pair_hits(csv("# hits\nB+A\n"), same.pairs.index) == {"A+B"}


def _benchmark(tmp_path: Path, data_dir: Path, screen: Path, *extra: str) -> dict:
    """`perturbloop benchmark` on a pair file (in this process); the GO tables from the test data, not fetched."""
    from perturbloop.cli import app

    out = tmp_path / f"{screen.stem}.json"
    res = CliRunner().invoke(app, ["benchmark", "--screen", str(screen), "--rounds", "2", "--batch", "8", "--seeds",
                                   "1", "--runner", "inline", "--fit-iter", "3", "--data-dir", str(data_dir), "--out", str(out),
                                   *extra],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_benchmark_on_a_pair_file_end_to_end(tmp_path, norman_slice, data_dir):
    singles, pairs = norman_slice
    result = _benchmark(tmp_path, data_dir, _write_columns(tmp_path / "norman_cols.csv", singles, pairs))
    rows = {r["policy"]: r for r in result["results"]}
    assert set(rows) == {"best (program)", "random"}
    n_hits = round(0.05 * (len(pairs) - 1))  # top 5% by |GI| of the pairs not held out
    for r in rows.values():
        assert r["n_hits"] == n_hits and len(r["per_round"]) == 2 and 0 <= r["hit_ratio"] <= 1
        assert [len(p) for p in r["picks"]] == [8, 8] and len({x for p in r["picks"] for x in p}) == 16
        found = {x for p in r["picks"] for x in p}
        strongest = set(pairs["gi"].abs().sort_values(ascending=False).index[:n_hits + 1])
        k = r["hit_ratio"] * n_hits  # hits found; the hits are among the n_hits + 1 strongest (one pair held out)
        assert k == pytest.approx(round(k)) and round(k) <= len(found & strongest)
    assert result["protocol"]["world"]["kind"] == "pair_screen"

    hits = tmp_path / "hits.txt"
    chosen = list(pairs.index[:5])
    hits.write_text("\n".join("+".join(reversed(h.split("+"))) for h in chosen) + "\n")
    result = _benchmark(tmp_path, data_dir, _write_labels(tmp_path / "norman_labels.csv", pairs), "--hits", str(hits),
                        "--policy", "best,random")
    for r in result["results"]:
        found = {x for p in r["picks"] for x in p} & set(chosen)
        assert r["n_hits"] in (4, 5)  # one pair is held out; it may be a hit
        assert r["hit_ratio"] == pytest.approx(len(found) / r["n_hits"])


def test_benchmark_refuses_hits_outside_the_file(tmp_path, norman_slice):
    from perturbloop.cli import app

    _, pairs = norman_slice
    screen = _write_labels(tmp_path / "p.csv", pairs)
    hits = tmp_path / "hits.txt"
    hits.write_text("KRAS+TP53\n")
    res = CliRunner().invoke(app, ["benchmark", "--screen", str(screen), "--hits", str(hits), "--rounds", "2",
                                   "--batch", "8", "--seeds", "1", "--runner", "inline", "--out",
                                   str(tmp_path / "r.json")], env={"COLUMNS": "200"})
    assert res.exit_code != 0 and "KRAS+TP53" in res.output and "not in the screen file" in res.output


def test_file_route_replays_the_registry_world(tmp_path, norman_slice, data_dir):
    """The Norman slice as a file and the registry's pair_fitness world (GI readout) on the same 16 genes give the
    same campaign: same picks, same hit ratios."""
    from agent.benchmark import campaign_for, pair_screen_config
    from perturbloop.config import parse_config

    singles, pairs = norman_slice
    config = pair_screen_config(str(_write_columns(tmp_path / "n.csv", singles, pairs)), hits=None, rounds=2, batch=8,
                                seeds=1, policies=["best"], fit_iter=3)
    registry = parse_config({**config.model_dump(), "world": {"kind": "pair_fitness", "dataset": "norman2019_pairs",
                                                               "readout": "gi"},
                             "design": {**config.design.model_dump(), "genes": list(singles.index)}}, "registry")
    a, b = campaign_for(config, "program", 0, data_dir), campaign_for(registry, "program", 0, data_dir)
    assert a["picks"] == b["picks"] and a["n_hits"] == b["n_hits"] == round(0.05 * (len(pairs) - 1))
    assert a["metrics"]["hit_ratio"] == pytest.approx(b["metrics"]["hit_ratio"])
