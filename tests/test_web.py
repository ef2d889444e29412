"""The review web app: token access (401 changes nothing), the API, and a real headless Chromium
driving the page end to end (log in, drop and add genes, approve, see the next proposal)."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from agent.approval import pending_round
from agent.runner import run_campaign
from agent.web import create_app
from perturbloop.config import parse_config
from perturbloop.errors import PerturbloopError
from perturbloop.store import Decision, Store

TOKEN = "s3cret-review-token"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def paused(slice_csv, data_dir, tmp_path) -> Store:
    """A campaign paused for approval of its first proposal."""
    store = Store(str(tmp_path / "pl.db"))
    cfg = parse_config({"name": "web", "rounds": 2, "batch_size": 8, "approval": "required",
                        "data": {"screen": str(slice_csv)}})
    assert run_campaign(cfg, store, data_dir).status == "awaiting_approval"
    return store


def _wait_advanced(app, campaign: str = "web", timeout: float = 120) -> None:
    t = app.state.advancer.running.get(campaign)
    if t is not None:
        t.join(timeout)
    assert app.state.advancer.errors.get(campaign) is None, app.state.advancer.errors


def _decisions(store: Store) -> list:
    return [store.decision(r.id) for r in store.rounds("web") if store.decision(r.id) is not None]


def test_token_is_required(paused, data_dir):
    with pytest.raises(PerturbloopError, match="token"):
        create_app(paused, "", data_dir)
    client = TestClient(create_app(paused, TOKEN, str(data_dir)))
    assert client.get("/healthz").json() == {"ok": True}
    for headers in ({}, {"Authorization": "Bearer wrong-token-123"}):
        assert client.get("/api/campaigns", headers=headers).status_code == 401
        assert client.get("/", headers=headers).status_code == 401
        r = client.post("/api/campaigns/web/decision", json={"by": "eve"}, headers=headers)
        assert r.status_code == 401
        r = client.post("/campaigns/web/decision", data={"action": "reject", "by": "eve"}, headers=headers)
        assert r.status_code == 401
    assert client.post("/login", data={"token": "wrong-token-123"}).status_code == 401
    assert _decisions(paused) == [] and pending_round(paused, "web") is not None  # nothing changed


def test_api_review_validate_and_approve(paused, data_dir):
    app = create_app(paused, TOKEN, str(data_dir))
    client = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    (c,) = client.get("/api/campaigns").json()
    assert c["campaign"] == "web" and c["status"] == "awaiting_approval"
    prop = client.get("/api/campaigns/web/proposal").json()
    labels = [i["perturbation"] for i in prop["items"]]
    assert prop["round"] == 1 and len(labels) == 8
    png = client.get("/campaigns/web/proposal.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/api/campaigns/nope/proposal").status_code == 404

    bad = client.post("/api/campaigns/web/decision", json={"add": ["NOTAGENE7"], "by": "ada"})
    assert bad.status_code == 400 and "NOTAGENE7" in bad.json()["detail"]
    assert _decisions(paused) == []  # a refused edit writes nothing

    ok = client.post("/api/campaigns/web/decision", json={"drop": [labels[0]], "note": "off-target risk", "by": "ada"})
    assert ok.status_code == 200 and ok.json()["final"] == labels[1:]
    _wait_advanced(app)
    (d,) = _decisions(paused)[:1]
    assert (d.action, d.by, d.dropped, d.note) == ("edited", "ada", [labels[0]], "off-target risk")
    assert client.get("/api/campaigns/web/proposal").json()["round"] == 2


def test_decision_stored_before_the_loop_resumes(paused, data_dir, slice_csv):
    """A decision written to the store (as the web app does first) unblocks the paused graph
    even if the process that took it died before resuming: a plain re-run continues."""
    r = pending_round(paused, "web")
    labels = [p.perturbation for p in paused.proposals(r.id)]
    paused.save_decision(Decision(round_id=r.id, action="approved", by="ada", final=labels))
    cfg = parse_config(paused.get_campaign("web").config)
    res = run_campaign(cfg, paused, data_dir)
    assert res.status == "awaiting_approval" and pending_round(paused, "web").index == 1
    (job,) = paused.lab_jobs(r.id)
    assert job.perturbations == labels


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(paused, data_dir):
    import uvicorn

    app = create_app(paused, TOKEN, str(data_dir))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    t.join(10)


@pytest.fixture
def browser(tmp_path):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_browser_login_edit_and_approve(live_server, browser, paused):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    app, base = live_server
    wait = WebDriverWait(browser, 120)

    browser.get(base + "/")
    assert "401" in browser.title  # not logged in
    browser.get(base + "/login")
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "login").click()
    # the click returns before the form's navigation has finished: wait for the answer page
    wait.until(EC.title_contains("401"))
    assert "wrong access token" in browser.find_element(By.ID, "detail").text

    browser.get(base + "/login")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait.until(EC.presence_of_element_located((By.ID, "campaigns")))
    browser.find_element(By.LINK_TEXT, "web").click()
    wait.until(EC.presence_of_element_located((By.ID, "proposal")))
    assert "Round 1 proposal awaiting approval" in browser.find_element(By.ID, "pending-title").text
    assert browser.execute_script("return document.getElementById('plot').naturalWidth") > 100  # the plot rendered

    r0 = pending_round(paused, "web")
    labels = [p.perturbation for p in paused.proposals(r0.id)]
    measured = {o.perturbation for o in paused.observations("web", include_failed=True)}
    cfg_genes = pd.read_csv(paused.get_campaign("web").config["data"]["screen"])["Gene"].tolist()
    spare = next(g for g in cfg_genes if g not in labels and g not in measured)

    # an unknown gene is refused on the page and nothing is stored
    browser.find_element(By.ID, "add").send_keys("NOTAGENE3")
    browser.find_element(By.ID, "by").send_keys("grace")
    browser.find_element(By.ID, "approve").click()
    err = wait.until(EC.presence_of_element_located((By.ID, "error")))
    assert "NOTAGENE3" in err.text and paused.decision(r0.id) is None

    browser.find_element(By.ID, f"drop-{labels[2]}").click()
    browser.find_element(By.ID, "add").send_keys(spare.lower())
    browser.find_element(By.ID, "by").send_keys("grace")
    browser.find_element(By.ID, "note").send_keys("swap one")
    browser.find_element(By.ID, "approve").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "pending-title"), "Round 2 proposal"))
    d = paused.decision(r0.id)
    assert (d.action, d.by, d.note, d.dropped, d.added) == ("edited", "grace", "swap one", [labels[2]], [spare])
    (job,) = paused.lab_jobs(r0.id)
    assert job.perturbations == [g for g in labels if g != labels[2]] + [spare]

    browser.find_element(By.ID, "by").send_keys("grace")
    browser.find_element(By.ID, "reject").click()
    wait.until(EC.presence_of_element_located((By.ID, "no-pending")))
    assert paused.get_campaign("web").status == "finished"
    assert paused.rounds("web")[1].status == "rejected"
