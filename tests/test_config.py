"""Campaign config validation: every bad field is a ConfigError that names it."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from perturbloop.config import CampaignConfig, load_config, parse_config
from perturbloop.errors import ConfigError

MINIMAL = {"name": "il2-test", "data": {"screen": "schmidt2021_il2"}}


def _with(path: str, value) -> dict:
    """MINIMAL with the dotted `path` set to `value`."""
    cfg = copy.deepcopy(MINIMAL)
    *parents, leaf = path.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return cfg


def _error(cfg: dict) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_config(cfg)
    return str(ei.value)


def test_minimal_config_defaults():
    c = parse_config(MINIMAL)
    assert isinstance(c, CampaignConfig)
    assert c.name == "il2-test" and c.data.screen == "schmidt2021_il2"
    assert (c.rounds, c.batch_size, c.objective, c.approval) == (5, 128, "hits", "auto")
    assert c.acquisition.kind == "greedy"  # SCREEN_DEFAULTS: chosen leave-one-screen-out (benchmarks/loso.py)
    assert c.surrogate.kind == "gp" and c.design.features == ["go", "knowledge"] and c.design.space == "genes"
    assert c.data.hit_fraction == 0.05 and c.lab.noise == "none"


def test_full_config_round_trips():
    c = parse_config({
        "name": "full", "rounds": 3, "batch_size": 32, "seed": 7, "approval": "required",
        "data": {"screen": "zhuang2019_nk", "hit_fraction": 0.1, "nonessential": True},
        "design": {"features": ["go", "screens"], "prior_screens": ["schmidt2021_il2"], "go_dims": 16},
        "surrogate": {"kind": "mean"},
        "acquisition": {"kind": "qlognei"},
        "lab": {"noise": "donor"},
    })
    assert parse_config(c.model_dump()) == c
    assert c.acquisition.kind == "qlognei" and c.design.prior_screens == ["schmidt2021_il2"]


def test_config_is_frozen():
    c = parse_config(MINIMAL)
    with pytest.raises(ValidationError, match="frozen"):
        c.batch_size = 3  # type: ignore[misc]


def test_unknown_field_names_dotted_path():
    msg = _error(_with("acquisition.bogus", 1))
    assert "acquisition.bogus" in msg and "unknown field" in msg


def test_unknown_top_level_field():
    msg = _error(_with("batchsize", 10))
    assert "batchsize: unknown field" in msg


def test_bad_enum_names_field():
    msg = _error(_with("acquisition.kind", "nope"))
    assert "acquisition.kind" in msg
    assert "'random'" in msg and "'qlognei'" in msg  # the allowed values are listed


@pytest.mark.parametrize(("path", "value"), [
    ("batch_size", -1), ("batch_size", 0), ("rounds", 0), ("data.hit_fraction", 1.5),
    ("design.go_dims", 1), ("surrogate.max_iter", 0), ("acquisition.beta", -1.0),
])
def test_out_of_range_numbers_name_field(path, value):
    msg = _error(_with(path, value))
    assert f"  {path}:" in msg


def test_missing_required_field():
    msg = _error({"name": "x"})
    assert "data: required field is missing" in msg


def test_bad_name_pattern():
    assert "  name:" in _error(_with("name", "has space"))


def test_pairs_design_refused():
    msg = _error(_with("design.space", "pairs"))
    assert "design" in msg and "genes" in msg


def test_several_errors_reported_together():
    cfg = _with("acquisition.kind", "nope")
    cfg["batch_size"] = -5
    msg = _error(cfg)
    assert "acquisition.kind" in msg and "batch_size" in msg


def test_load_config_valid(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('name = "from-file"\nbatch_size = 16\n\n[data]\nscreen = "schmidt2021_il2"\n\n[acquisition]\nkind = "greedy"\n')
    c = load_config(path)
    assert c.name == "from-file" and c.batch_size == 16 and c.acquisition.kind == "greedy"


def test_load_config_error_names_file_and_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[data]\nscreen = "s"\n[acquisition]\nbogus = 1\n')
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert str(path) in str(ei.value) and "acquisition.bogus" in str(ei.value)


def test_invalid_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x\n[data\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml.*does not exist"):
        load_config(tmp_path / "nope.toml")


def test_a_campaign_stored_under_an_older_config_format_resumes(tmp_path):
    """Fields added to the config model since a campaign was stored take their defaults on resume; a real
    change of a field is still refused."""
    from perturbloop.config import stored_config_as_today
    from perturbloop.errors import StoreError
    from perturbloop.store import Store

    for raw in ({"name": "s", "data": {"screen": "schmidt2021_il2"}, "batch_size": 8},
                {"name": "r", "world": {"kind": "synthetic_grn"}, "initial": 4}):
        today = parse_config(raw).model_dump(mode="json")
        old = {k: v for k, v in today.items() if k not in ("evaluation", "world", "data", "approval", "lab")}
        old.update({k: today[k] for k in ("world", "data") if today[k] is not None})
        old["design"] = {k: v for k, v in today["design"].items() if k not in ("pooling", "prior_rank", "gaf")}
        store = Store(str(tmp_path / f"{raw['name']}.db"))
        store.create_or_check_campaign(raw["name"], old)
        with pytest.raises(StoreError, match="different config"):
            store.create_or_check_campaign(raw["name"], today)
        store.create_or_check_campaign(raw["name"], today, normalise=stored_config_as_today)
        with pytest.raises(StoreError, match="different config"):
            store.create_or_check_campaign(raw["name"], {**today, "rounds": 9}, normalise=stored_config_as_today)


@pytest.mark.parametrize(("path", "value", "shown"), [
    ("rounds", True, "got true"), ("batch_size", 2.5, "got 2.5"), ("seed", -1, "got -1"),
    ("seed", 10**19, "got 10000000000000000000"), ("acquisition.beta", float("inf"), "got inf"),
    ("acquisition.beta", float("nan"), "got nan"), ("data.nonessential", 1, "got 1"), ("surrogate.max_iter", "10", "got '10'"),
])
def test_values_that_crash_every_run_are_refused_up_front(path, value, shown):
    """Issue 13 (7): numbers and flags are taken as written (no `true` -> 1), seeds are 32-bit unsigned,
    floats are finite; the message names the field and what was written."""
    msg = _error(_with(path, value))
    assert f"  {path}:" in msg and shown in msg, msg


def test_response_world_seed_is_checked_and_ints_still_pass_as_floats():
    with pytest.raises(ConfigError, match=r"world\.seed.*got -3"):
        parse_config({"name": "r", "world": {"kind": "synthetic_grn", "seed": -3}})
    c = parse_config(_with("acquisition.beta", 2))  # TOML `beta = 2` is a float field written as an int
    assert c.acquisition.beta == 2.0 and parse_config(c.model_dump(mode="json")) == c
    assert c.acquisition.kind == "ucb"  # a UCB weight without a kind names UCB, not the screen default (greedy)
    assert parse_config(_with("seed", 2**32 - 1)).seed == 2**32 - 1


@pytest.mark.slow
def test_a_batch_larger_than_what_is_left_measures_it_and_the_campaign_finishes(slice_csv, data_dir, tmp_path):
    """Issue 13 (7): 6 genes, batches of 4, 3 rounds: round 1 measures 4, round 2 the 2 left, and the campaign
    finishes (round 3 has nothing to propose) instead of failing in `fit` on every run."""
    import pandas as pd

    from agent.runner import run_campaign
    from perturbloop.store import Store

    genes = list(pd.read_csv(slice_csv)["Gene"][:6])
    cfg = parse_config({"name": "small", "rounds": 3, "batch_size": 4, "data": {"screen": str(slice_csv)},
                        "design": {"genes": genes}})
    store = Store(str(tmp_path / "pl.db"))
    res = run_campaign(cfg, store, data_dir)
    assert res.status == "finished" and store.get_campaign("small").status == "finished"
    assert [(r.index, r.status) for r in store.rounds("small")] == [(0, "ingested"), (1, "ingested")]
    assert sorted(o.perturbation for o in store.observations("small")) == sorted(genes)
    assert run_campaign(cfg, store, data_dir).status == "finished"  # a second run changes nothing
    assert len(store.rounds("small")) == 2


def test_a_stored_campaign_keeps_the_defaults_it_started_with(tmp_path):
    """The screen defaults changed (go + ucb -> go + knowledge + greedy, leave-one-screen-out): a campaign stored
    under the old ones, resumed from the same file (which sets neither), runs on as it started instead of being
    refused as a changed config; a new campaign takes today's defaults; a field the file does set is still compared."""
    from agent.runner import check_stored_campaign, with_stored_defaults
    from perturbloop.errors import StoreError
    from perturbloop.store import Store

    path = tmp_path / "c.toml"
    path.write_text('name = "old"\nbatch_size = 8\n\n[data]\nscreen = "schmidt2021_il2"\n')
    today = load_config(path)
    assert today.design.features == ["go", "knowledge"] and today.acquisition.kind == "greedy"
    stored = today.model_dump(mode="json")
    stored["design"]["features"], stored["acquisition"]["kind"] = ["go"], "ucb"  # as the earlier defaults wrote it
    store = Store(str(tmp_path / "pl.db"))
    store.create_or_check_campaign("old", stored)
    with pytest.raises(StoreError, match="different config"):
        check_stored_campaign(today, store)  # what a resume did before: refused
    resumed = with_stored_defaults(today, store)
    assert resumed.design.features == ["go"] and resumed.acquisition.kind == "ucb"
    check_stored_campaign(resumed, store)
    assert with_stored_defaults(today, Store(str(tmp_path / "new.db"))) is today  # a new campaign: today's
    path.write_text('name = "old"\nbatch_size = 8\n\n[data]\nscreen = "schmidt2021_il2"\n\n[design]\n'
                    'features = ["go", "knowledge"]\n')
    explicit = with_stored_defaults(load_config(path), store)
    assert explicit.design.features == ["go", "knowledge"] and explicit.acquisition.kind == "ucb"
    with pytest.raises(StoreError, match="different config"):
        check_stored_campaign(explicit, store)
