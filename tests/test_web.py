"""The review web app: token access (401 changes nothing), sessions and CSRF, the API, decisions
tied to the proposal the reviewer saw (stale or concurrent ones get 409), and a real headless
Chromium driving the page end to end (log in, drop and add genes, approve, see the next proposal;
a stale form and a cross-site form refused)."""

from __future__ import annotations

import http.server
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from agent.approval import pending_round
from agent.runner import run_campaign
from agent.web import create_app
from tests.conftest import serve_app
from perturbloop.config import parse_config
from perturbloop.errors import PerturbloopError
from perturbloop.store import Decision, Store

TOKEN = "s3cret-review-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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


def _logged_out(client: TestClient) -> bool:
    """Whether `client` (a browser without a live session) is sent from `/` to the login form."""
    r = client.get("/", follow_redirects=False)
    return r.status_code == 303 and r.headers["location"].startswith("/login")


def _login(client: TestClient, campaign: str = "web") -> str:
    """Log `client` in through the form; returns the CSRF token of the campaign page's forms."""
    r = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert r.status_code == 303, r.text
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(f"/campaigns/{campaign}").text)
    assert found, "the campaign page has no CSRF field"
    return found.group(1)


def test_token_is_required(paused, data_dir):
    with pytest.raises(PerturbloopError, match="token"):
        create_app(paused, "", data_dir)
    client = TestClient(create_app(paused, TOKEN, str(data_dir)))
    assert client.get("/healthz").json() == {"ok": True}
    for headers in ({}, {"Authorization": "Bearer wrong-token-123"}):
        assert client.get("/api/campaigns", headers=headers).status_code == 401
        page = client.get("/", headers=headers, follow_redirects=False)
        assert page.status_code == (401 if headers else 303)  # a browser (no header) is sent to the login form
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

    bad = client.post("/api/campaigns/web/decision", json={"add": ["NOTAGENE7"], "by": "ada", "proposal": prop["proposal"]})
    assert bad.status_code == 400 and "NOTAGENE7" in bad.json()["detail"]
    assert _decisions(paused) == []  # a refused edit writes nothing

    ok = client.post("/api/campaigns/web/decision",
                     json={"drop": [labels[0]], "veto": [labels[1]], "note": "off-target risk", "by": "ada",
                           "proposal": prop["proposal"]})
    assert ok.status_code == 200 and ok.json()["final"] == labels[2:] and ok.json()["vetoed"] == [labels[1]]
    _wait_advanced(app)
    (d,) = _decisions(paused)[:1]
    assert (d.action, d.by, d.dropped, d.note) == ("edited", "ada", labels[:2], "off-target risk")
    assert [(v.perturbation, v.by, v.note) for v in paused.vetoes("web")] == [(labels[1], "ada", "off-target risk")]
    nxt = client.get("/api/campaigns/web/proposal").json()
    assert nxt["round"] == 2 and labels[1] not in [i["perturbation"] for i in nxt["items"]]


def test_decision_must_name_the_pending_proposal(paused, data_dir):
    """A decision carries the id of the proposal it was made on: none is refused (422), a wrong or
    stale one gets 409 and writes nothing; an old id never approves the next round unseen."""
    app = create_app(paused, TOKEN, str(data_dir))
    client = TestClient(app, headers=AUTH)
    first = client.get("/api/campaigns/web/proposal").json()["proposal"]
    assert client.post("/api/campaigns/web/decision", json={"by": "ada"}).status_code == 422
    wrong = client.post("/api/campaigns/web/decision", json={"by": "ada", "proposal": first + "0"})
    assert wrong.status_code == 409 and "reload" in wrong.json()["detail"]
    assert _decisions(paused) == []

    assert client.post("/api/campaigns/web/decision", json={"by": "ada", "proposal": first}).status_code == 200
    _wait_advanced(app)
    second = client.get("/api/campaigns/web/proposal").json()
    assert second["round"] == 2 and second["proposal"] != first
    stale = client.post("/api/campaigns/web/decision", json={"by": "bob", "reject": True, "proposal": first})
    assert stale.status_code == 409 and "round 2" in stale.json()["detail"]
    assert [d.by for d in _decisions(paused)] == ["ada"] and pending_round(paused, "web").index == 1


def test_session_cookie_csrf_and_logout(paused, data_dir):
    """The cookie holds a random session id, not the token; every form needs the session's CSRF
    token and a same-origin request; logging out ends the session on the server."""
    app = create_app(paused, TOKEN, str(data_dir))
    client = TestClient(app)
    assert client.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303
    sid = client.cookies.get("perturbloop_session")
    assert sid and TOKEN not in sid
    cookie = client.post("/login", data={"token": TOKEN}, follow_redirects=False).headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie  # plain http
    csrf = _login(client)
    proposal = client.get("/api/campaigns/web/proposal").json()["proposal"]
    form = {"action": "approve", "by": "mallory", "proposal": proposal}
    for data, headers in (
        (form, {}),  # no CSRF token (a form built elsewhere)
        ({**form, "csrf": csrf[::-1]}, {}),  # a wrong one
        ({**form, "csrf": csrf}, {"Sec-Fetch-Site": "same-site"}),  # another port on the same host
        ({**form, "csrf": csrf}, {"Origin": "http://127.0.0.1:9"}),  # another origin
    ):
        r = client.post("/campaigns/web/decision", data=data, headers=headers, follow_redirects=False)
        assert r.status_code == 403, (data, headers, r.status_code)
    r = client.post("/api/campaigns/web/decision", json={"by": "mallory", "proposal": proposal})
    assert r.status_code == 403  # the cookie alone does not authorise an API write either
    assert _decisions(paused) == []

    page = client.get("/campaigns/web")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "default-src 'self'" in page.headers["content-security-policy"]

    outsider = TestClient(app)
    outsider.cookies.set("perturbloop_session", TOKEN)  # the token itself is no session id
    assert _logged_out(outsider)
    assert client.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    replay = TestClient(app)
    replay.cookies.set("perturbloop_session", sid)
    assert _logged_out(replay)  # the session ended on the server, not only in the browser


def test_secure_cookie_over_https_and_session_expiry(paused, data_dir):
    app = create_app(paused, TOKEN, str(data_dir))
    client = TestClient(app, base_url="https://review.example.org")
    r = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()
    assert client.get("/").status_code == 200
    sessions = app.state.sessions
    sessions.clock = lambda: time.monotonic() + sessions.ttl_s + 1
    assert _logged_out(client)


def test_failed_logins_are_rate_limited(paused, data_dir):
    app = create_app(paused, TOKEN, str(data_dir))
    limiter = app.state.login_limiter
    now = [1000.0]
    limiter.clock = lambda: now[0]
    client = TestClient(app)
    for _ in range(limiter.max_failures):
        assert client.post("/login", data={"token": "wrong-token-123"}).status_code == 401
    blocked = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0  # even the right token waits
    assert client.get("/api/campaigns", headers=AUTH).status_code == 429  # the API's bearer check too
    assert _logged_out(client)
    now[0] += limiter.window_s + 1
    assert client.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303
    assert client.get("/api/campaigns", headers=AUTH).status_code == 200


def test_index_page_hides_the_store_password(fresh_postgres_url):
    from sqlalchemy.engine import make_url

    url = make_url(fresh_postgres_url).set(password="pw-SECRET-42").render_as_string(hide_password=False)
    page = TestClient(create_app(url, TOKEN), headers=AUTH).get("/")
    assert page.status_code == 200 and "pw-SECRET-42" not in page.text and ":***@" in page.text


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


@pytest.fixture
def live_server(paused, data_dir):
    app = create_app(paused, TOKEN, str(data_dir))
    with serve_app(app) as base:
        yield app, base


def test_concurrent_decisions_have_one_winner(live_server, paused):
    """Eight reviewers decide at once (approve and reject mixed): one 200, seven 409, and the
    stored decision is the one the 200 reported."""
    app, base = live_server
    proposal = httpx.get(f"{base}/api/campaigns/web/proposal", headers=AUTH).json()["proposal"]
    r0 = pending_round(paused, "web")
    n = 8
    barrier = threading.Barrier(n)

    def post(i: int) -> httpx.Response:
        body = {"by": f"reviewer-{i}", "reject": bool(i % 2), "proposal": proposal}
        barrier.wait()
        return httpx.post(f"{base}/api/campaigns/web/decision", json=body, headers=AUTH, timeout=120)

    with ThreadPoolExecutor(n) as ex:
        answers = list(ex.map(post, range(n)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [409] * (n - 1), [(a.status_code, a.text[:200]) for a in answers]
    (won,) = [a.json() for a in answers if a.status_code == 200]
    _wait_advanced(app)
    if won["action"] == "rejected":  # kept as a rejection; the round is proposed again
        (rej,) = paused.rejections(r0.id)
        assert rej.by == won["by"] and paused.decision(r0.id) is None
    else:
        d = paused.decision(r0.id)
        assert (d.action, d.by) == (won["action"], won["by"]) and not paused.rejections(r0.id)


@pytest.fixture
def attacker_site():
    """Another origin on the same host (another port): serves one page whose form posts to the
    review app (`set_form(html)` sets it)."""
    page = {"html": b"<html><body>nothing yet</body></html>"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(page["html"])

        def log_message(self, *args) -> None:  # keep the test output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", lambda html: page.update(html=html.encode())
    server.shutdown()
    t.join(10)


@pytest.mark.slow
def test_browser_login_edit_and_approve(live_server, browser, paused):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    app, base = live_server
    # the campaign page refreshes itself while busy: a poll that lands mid-swap gets a driver error
    wait = WebDriverWait(browser, 120, ignored_exceptions=(WebDriverException,))

    browser.get(base + "/")
    wait.until(EC.presence_of_element_located((By.ID, "token")))  # not logged in: sent to the login form
    assert browser.current_url.startswith(base + "/login")
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

    # rejecting round 2 does not use it up: it is proposed again, without the rejected batch
    r1 = pending_round(paused, "web")
    rejected = [p.perturbation for p in paused.proposals(r1.id)]
    browser.execute_script("document.body.dataset.before = 'reject'")  # gone once the answer page loads
    browser.find_element(By.ID, "by").send_keys("grace")
    browser.find_element(By.ID, "note").send_keys("wrong pathway")
    browser.find_element(By.ID, "reject").click()
    # Chrome may answer "node does not belong to the document" (not a stale-element error) while the
    # page is swapped, so poll for the new document (wait ignores driver errors in the meantime)
    wait.until(lambda b: b.execute_script("return document.readyState === 'complete' && !document.body.dataset.before"))
    wait.until(lambda b: b.find_elements(By.ID, "decision") and not b.find_elements(By.ID, "busy"))
    assert "Round 2 proposal" in browser.find_element(By.ID, "pending-title").text
    (rej,) = paused.rejections(r1.id)
    assert (rej.by, rej.note, rej.perturbations) == ("grace", "wrong pathway", rejected)
    again = [p.perturbation for p in paused.proposals(r1.id)]
    assert again and not set(again) & set(rejected)

    # the veto box rules a gene out for good (and drops it from the batch)
    browser.find_element(By.ID, f"veto-{again[0]}").click()
    browser.find_element(By.ID, "by").send_keys("grace")
    browser.find_element(By.ID, "note").send_keys("toxic")
    browser.find_element(By.ID, "approve").click()
    wait.until(EC.presence_of_element_located((By.ID, "no-pending")))
    assert paused.get_campaign("web").status == "finished"
    assert paused.rounds("web")[1].status == "ingested" and paused.decision(r1.id).final == again[1:]
    assert [(v.perturbation, v.by, v.note) for v in paused.vetoes("web")] == [(again[0], "grace", "toxic")]


@pytest.mark.slow
def test_browser_refuses_a_stale_form_and_a_cross_site_form(live_server, browser, paused, attacker_site):
    """A form showing round 1, submitted after another reviewer decided it, gets 409 and decides
    nothing; a form on another port of the same host, posted with the reviewer's cookie, gets 403 (cross-site);
    the app's own form carrying an ended session's CSRF token gets 403 (CSRF token)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    app, base = live_server
    wait = WebDriverWait(browser, 120, ignored_exceptions=(WebDriverException,))
    browser.get(base + "/login")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait.until(EC.presence_of_element_located((By.ID, "campaigns")))
    browser.get(base + "/campaigns/web")
    wait.until(EC.presence_of_element_located((By.ID, "proposal")))
    r0 = pending_round(paused, "web")

    # another reviewer approves round 1 through the API while this page still shows it
    first = httpx.get(f"{base}/api/campaigns/web/proposal", headers=AUTH).json()["proposal"]
    ok = httpx.post(f"{base}/api/campaigns/web/decision", json={"by": "ada", "proposal": first}, headers=AUTH)
    assert ok.status_code == 200, ok.text
    _wait_advanced(app)
    r1 = pending_round(paused, "web")
    assert r1.index == 1
    browser.find_element(By.ID, "by").send_keys("grace")
    browser.find_element(By.ID, "reject").click()
    wait.until(EC.title_contains("409"))
    assert "round 2" in browser.find_element(By.ID, "detail").text
    assert paused.decision(r0.id).by == "ada" and paused.decision(r1.id) is None
    browser.find_element(By.ID, "back").click()  # back to the campaign, now showing round 2
    wait.until(EC.text_to_be_present_in_element((By.ID, "pending-title"), "Round 2 proposal"))

    # a page on another origin posts a complete decision form (even the right proposal id) to the app
    second = httpx.get(f"{base}/api/campaigns/web/proposal", headers=AUTH).json()["proposal"]
    attacker, set_form = attacker_site
    set_form(f"""<html><head><title>cute cats</title></head><body>
      <form method="post" action="{base}/campaigns/web/decision">
       <input type="hidden" name="action" value="reject"><input type="hidden" name="by" value="mallory">
       <input type="hidden" name="proposal" value="{second}">
       <button type="submit" id="go">see the cats</button></form></body></html>""")
    browser.get(attacker + "/")
    browser.find_element(By.ID, "go").click()
    wait.until(EC.title_contains("403"))
    assert "cross-site" in browser.find_element(By.ID, "detail").text
    assert paused.decision(r1.id) is None and pending_round(paused, "web").id == r1.id

    # the app's own page from an ended session (the reviewer logged out and in again in another tab): same origin
    # and a live cookie, but the form's CSRF token is the old session's, so 403 and nothing decided
    browser.get(base + "/campaigns/web")
    wait.until(EC.text_to_be_present_in_element((By.ID, "pending-title"), "Round 2 proposal"))
    old_tab = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(base + "/campaigns/web")
    wait.until(EC.presence_of_element_located((By.ID, "logout"))).click()
    wait.until(EC.presence_of_element_located((By.ID, "token"))).send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait.until(EC.presence_of_element_located((By.ID, "campaigns")))
    browser.close()
    browser.switch_to.window(old_tab)
    browser.find_element(By.ID, "by").send_keys("grace")
    browser.find_element(By.ID, "approve").click()
    wait.until(EC.title_contains("403"))
    assert "CSRF token" in browser.find_element(By.ID, "detail").text
    assert paused.decision(r1.id) is None and pending_round(paused, "web").id == r1.id
