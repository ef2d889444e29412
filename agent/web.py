"""The review web app (`perturbloop web`): campaigns, the pending proposal, approve / edit / reject.

A small FastAPI app over the store. Every page and API call but `/healthz` and `/login` needs
the access token: an `Authorization: Bearer TOKEN` header (API clients), or a browser session.
`POST /login` checks the token and starts a session: the HttpOnly, SameSite=Strict cookie holds
only a random session id (never the token), looked up on the server, valid for
`SESSION_TTL_S`, ended on the server by `POST /logout`, and marked `Secure` when the app is
reached over HTTPS. A wrong or missing token gets 401 and changes nothing; after
`LoginLimiter.max_failures` wrong tokens from one address within `LoginLimiter.window_s`, that
address gets 429 until the window has passed. The token is compared in constant time and never
logged (it never appears in a URL).

Cross-site requests: every POST is refused (403) when the browser marks it as coming from another
site (`Sec-Fetch-Site`), or, from browsers that do not send that header, when its `Origin` is not
this app's host; every write made with the session cookie must also carry the session's CSRF
token (form field `csrf`, or the `X-CSRF-Token` header). Every response forbids framing
(`X-Frame-Options: DENY`, CSP `frame-ancestors 'none'`) and scripts (`CONTENT_SECURITY_POLICY`).

A decision names the proposal it was made on (`proposal`, the id from `agent.approval.proposal_id`,
shown in the page's form and in `GET /api/campaigns/{id}/proposal`); a decision on any other
proposal (a stale form) gets 409. It is validated exactly like `perturbloop approve`
(`agent.approval.decide`) and written to the store at once, atomically (of concurrent decisions
exactly one is stored, the others get 409), so it survives a crash of this server; the campaign
then advances in a background thread to its next pause: the next proposal, the lab, or the end.

A browser that is not logged in is sent to the login form (303 to `/login?next=PATH`) by every page; API
clients (and a wrong bearer token) get 401.

A campaign across contexts (labels `GENE@@context`) also gets a gene x context grid of what is measured and what
the pending round proposes (`agent.context_view.context_grid`), the proposal table shows gene and context apart,
and the add field takes `GENE@@context`.

What the scientist reads: predictions in the screen's own units (predicted |score| with its interval and the
probability of a hit, `agent.screen_units`), never the model's transformed scale; the campaign's hit curve so
far; every decision on each round (who, when, why, what it changed); each round's work time without the hours
its proposals waited for approval (`agent.report.round_times`).

Routes: `GET /` campaigns, `GET /campaigns/{id}` rounds, hit curve, decisions and the pending proposal,
`GET /campaigns/{id}/proposal.svg` (and `.png`) predicted value and interval of each proposed perturbation,
`POST /campaigns/{id}/decision` (form); JSON: `GET /api/campaigns`, `GET /api/campaigns/{id}/proposal`,
`POST /api/campaigns/{id}/decision`.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import math
import re
import secrets
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import BaseModel, Field

from agent.approval import DecisionConflictError, decide, pending_proposal, record_decision
from agent.context_view import context_grid
from agent.report import campaign_overview, pending_view
from perturbloop.config import parse_config
from perturbloop.errors import PerturbloopError
from perturbloop.plots import hit_curve_svg
from perturbloop.store import Store, display_url

COOKIE = "perturbloop_session"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 12 * 3600.0  # a working day: log in again the next morning
# No scripts at all (the pages have none); inline styles only (the templates' <style> blocks);
# images, forms and everything else from this app only; never inside a frame.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'none'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))


class DecisionIn(BaseModel):
    """A decision from an API client: approve (no edits), edit (drop/add/veto) or reject (with vetoes)."""

    drop: list[str] = Field(default_factory=list)
    add: list[str] = Field(default_factory=list)
    veto: list[str] = Field(default_factory=list, description="never propose these again (dropped from this batch)")
    reject: bool = False
    note: str = ""
    by: str = Field(min_length=1, max_length=100)
    proposal: str = Field(min_length=1, max_length=100,
                          description="id of the proposal decided on (`proposal` of GET /api/campaigns/{id}/proposal)")


@dataclass
class WebSession:
    """A logged-in browser: its CSRF token and when the session ends (on `Sessions.clock`)."""

    csrf: str
    expires: float


@dataclass
class Sessions:
    """Browser sessions, kept on the server: the cookie carries only a random id (`secrets`),
    stored here by its SHA-256 so this table holds no usable cookie either."""

    ttl_s: float = SESSION_TTL_S
    clock: Callable[[], float] = time.monotonic
    _by_key: dict[str, WebSession] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def _key(session_id: str) -> str:
        return hashlib.sha256(session_id.encode()).hexdigest()

    def start(self) -> str:
        """A new session; returns its id (the cookie value)."""
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            now = self.clock()
            self._by_key = {k: v for k, v in self._by_key.items() if v.expires > now}
            self._by_key[self._key(session_id)] = WebSession(csrf=secrets.token_urlsafe(32), expires=now + self.ttl_s)
        return session_id

    def get(self, session_id: str | None) -> WebSession | None:
        """The live session with this id, if any."""
        if not session_id:
            return None
        with self._lock:
            s = self._by_key.get(self._key(session_id))
            return s if s is not None and s.expires > self.clock() else None

    def end(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._by_key.pop(self._key(session_id), None)


@dataclass
class LoginLimiter:
    """Failed access-token checks per client address: after `max_failures` within `window_s`
    seconds, every attempt from that address (even with the right token) is refused until the
    oldest failure leaves the window."""

    max_failures: int = 10
    window_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    max_addresses: int = 10_000  # memory bound: beyond it the stalest addresses are forgotten
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _recent(self, address: str, now: float) -> deque[float]:
        q = self._failures.get(address, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, address: str) -> int:
        """Seconds until `address` may try again; 0 if it may now."""
        with self._lock:
            now = self.clock()
            q = self._recent(address, now)
            return max(1, math.ceil(q[0] + self.window_s - now)) if len(q) >= self.max_failures else 0

    def failed(self, address: str) -> None:
        with self._lock:
            now = self.clock()
            q = self._recent(address, now)
            q.append(now)
            self._failures[address] = q
            if len(self._failures) > self.max_addresses:
                stalest = sorted(self._failures, key=lambda a: self._failures[a][-1] if self._failures[a] else 0.0)
                for a in stalest[: len(self._failures) - self.max_addresses]:
                    del self._failures[a]

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)


def check_csrf(session: WebSession | None, sent: str | None) -> None:
    """A write made with the session cookie (`session`; None for an API client with the bearer token) must carry
    the session's CSRF token (403 if not)."""
    if session is not None and not (sent and hmac.compare_digest(sent.encode(), session.csrf.encode())):
        raise HTTPException(403, "the request's CSRF token is missing or does not match this session: "
                                 "reload the page and submit it again")


def _same_origin(request: Request) -> None:
    """Every unsafe request (POST) must come from this app's own pages or a non-browser client, else 403. Browsers
    that send `Sec-Fetch-Site` are believed (`same-site` is refused too: another port on this host is another
    origin); for older ones a present `Origin` must name this host (no `Origin`: not sent by a browser, e.g. curl)."""
    site, origin = request.headers.get("sec-fetch-site"), request.headers.get("origin")
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if site is not None and site not in ("same-origin", "none"):
        why = f"Sec-Fetch-Site: {site}"
    elif site is None and origin is not None and origin.split("://", 1)[-1] != request.headers.get("host", ""):
        why = f"Origin: {origin}"
    else:
        return
    raise HTTPException(403, f"cross-site request refused ({why}): decide from this app's own pages")


@dataclass
class Advancer:
    """Advances campaigns after a decision, one background thread per campaign."""

    store: Store
    data_dir: str | None
    running: dict[str, threading.Thread] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    _contexts: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def context(self, campaign_id: str):
        """The campaign's runtime context (candidate pool, lab, policy), built once from its stored config."""
        from agent.context import build_context

        with self._lock:
            if campaign_id not in self._contexts:
                c = self.store.get_campaign(campaign_id)
                config = parse_config(c.config, f"stored config of {campaign_id}")
                self._contexts[campaign_id] = build_context(config, self.store, self.data_dir)
            return self._contexts[campaign_id]

    def busy(self, campaign_id: str) -> bool:
        t = self.running.get(campaign_id)
        return t is not None and t.is_alive()

    def start(self, campaign_id: str, decision: dict) -> None:
        from agent.runner import run_campaign

        ctx = self.context(campaign_id)

        def work() -> None:
            try:
                run_campaign(ctx.config, self.store, self.data_dir, resume=decision, context=ctx)
                self.errors.pop(campaign_id, None)
            except Exception as e:  # shown on the campaign page; the store keeps the decision
                self.errors[campaign_id] = f"{type(e).__name__}: {e}"
                traceback.print_exc()

        t = threading.Thread(target=work, name=f"advance-{campaign_id}", daemon=True)
        self.running[campaign_id] = t
        t.start()


def _split_genes(text: str) -> list[str]:
    return [g for g in re.split(r"[\s,;]+", text.strip()) if g]


def create_app(store: Store | str | None, token: str, data_dir: str | None = None) -> FastAPI:
    """The review app over `store`; `token` is the shared access secret (required, >= 8 characters)."""
    if not token or len(token) < 8:
        raise PerturbloopError("web: the access token must be set and at least 8 characters long")
    store = store if isinstance(store, Store) else Store(store)
    advancer = Advancer(store, data_dir)
    sessions, limiter = Sessions(), LoginLimiter()

    app = FastAPI(title="perturbloop review", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(_same_origin)])
    app.state.advancer, app.state.sessions, app.state.login_limiter = advancer, sessions, limiter

    def _ok(candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), token.encode())

    def _address(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def _not_blocked(request: Request) -> None:
        wait = limiter.retry_after(_address(request))
        if wait:
            raise HTTPException(429, f"too many wrong access tokens from this address: try again in {wait} s",
                                headers={"Retry-After": str(wait)})

    def authorised(request: Request) -> WebSession | None:
        """The browser session of the caller, or None for an API client with the bearer token; else 401."""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            _not_blocked(request)
            if _ok(header[7:]):
                return None
            limiter.failed(_address(request))
        elif (session := sessions.get(request.cookies.get(COOKIE))) is not None:
            return session
        raise HTTPException(401, "a valid access token is required", headers={"WWW-Authenticate": "Bearer"})

    def page(request: Request, template: str, session: WebSession | None, context: dict) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, template, {**context, "csrf": session and session.csrf})

    def campaign_or_404(campaign_id: str) -> None:
        if store.get_campaign(campaign_id) is None:
            raise HTTPException(404, f"no campaign {campaign_id!r}")

    def pending_or_404(campaign_id: str) -> dict:
        campaign_or_404(campaign_id)
        p = pending_view(store, campaign_id)
        if p is None:
            raise HTTPException(404, f"campaign {campaign_id!r} has no pending proposal")
        return p

    def record(campaign_id: str, d: DecisionIn) -> dict:
        """Check the proposal id, validate, store (atomically), then advance in the background.

        Raises 409 for a proposal that is not the pending one or a decision that lost to a concurrent one,
        PerturbloopError (400) for bad input."""
        try:
            if advancer.busy(campaign_id):
                raise DecisionConflictError(f"campaign {campaign_id!r} is still advancing after the last decision: "
                                            "reload in a moment")
            r, _ = pending_proposal(store, campaign_id, d.proposal)
            ctx = advancer.context(campaign_id)
            store.check_files(campaign_id, ctx.config.named_files())  # a file changed behind the campaign: no write
            decision = decide(store, campaign_id, ctx.candidate_labels(), drop=d.drop, add=d.add, veto=d.veto,
                              reject=d.reject, note=d.note, by=d.by, data_dir=data_dir, proposal=d.proposal)
            stored, won = record_decision(store, r.id, decision)  # on the batch it was made on (`seen`) only
            if not won:
                raise DecisionConflictError(f"another decision on this proposal was recorded first: {stored.action} "
                                            f"by {stored.by}; reload to see it")
        except DecisionConflictError as e:
            raise HTTPException(409, str(e)) from None
        advancer.start(campaign_id, decision)
        return decision

    @app.middleware("http")
    async def _security_headers(request: Request, call_next):  # noqa: ANN202
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):  # noqa: ANN202
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        path = request.url.path
        if exc.status_code == 401 and request.method == "GET" and "authorization" not in request.headers:
            return RedirectResponse(f"/login?{urlencode({'next': path})}", status_code=303)  # a browser: log in first
        back = path.removesuffix("/decision") if exc.status_code == 409 and path.endswith("/decision") else None
        return TEMPLATES.TemplateResponse(request, "error.html",
                                          {"status": exc.status_code, "detail": exc.detail, "back": back},
                                          status_code=exc.status_code, headers=exc.headers)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/"):  # noqa: ANN202, A002
        return TEMPLATES.TemplateResponse(request, "login.html", {"next": _local_path(next)})

    @app.post("/login")
    def login(request: Request, token_in: str = Form(..., alias="token"),
              next_path: str = Form("/", alias="next")):  # noqa: ANN202
        _not_blocked(request)
        if not _ok(token_in):
            limiter.failed(_address(request))
            raise HTTPException(401, "wrong access token")
        limiter.succeeded(_address(request))
        sessions.end(request.cookies.get(COOKIE))  # a new id at every log-in
        resp = RedirectResponse(_local_path(next_path), status_code=303)
        resp.set_cookie(COOKIE, sessions.start(), max_age=int(sessions.ttl_s), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
        return resp

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")):  # noqa: ANN202
        session_id = request.cookies.get(COOKIE)
        session = sessions.get(session_id)
        if session is not None:
            check_csrf(session, csrf)
            sessions.end(session_id)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return resp

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, session: WebSession | None = Depends(authorised)):  # noqa: ANN202
        return page(request, "index.html", session, {"campaigns": campaign_overview(store),
                                                    "store": display_url(store.url)})

    @app.get("/campaigns/{campaign_id}", response_class=HTMLResponse)
    def campaign_page(request: Request, campaign_id: str, error: str | None = None,
                      session: WebSession | None = Depends(authorised)):  # noqa: ANN202
        campaign_or_404(campaign_id)
        overview = next(c for c in campaign_overview(store) if c["campaign"] == campaign_id)
        curve = overview["hit_curve"]
        svg = Markup(hit_curve_svg(curve, caption=f"{campaign_id}: hits found so far, per round")) if curve else None
        waiting = pending_view(store, campaign_id)
        return page(request, "campaign.html", session, {
            "c": overview, "pending": waiting, "busy": advancer.busy(campaign_id),
            "error": error, "advance_error": advancer.errors.get(campaign_id), "hit_curve": svg,
            "grid": context_grid(store, campaign_id, waiting)})

    @app.get("/campaigns/{campaign_id}/proposal.{fmt}", dependencies=[Depends(authorised)])
    def proposal_plot(campaign_id: str, fmt: str) -> Response:
        if fmt not in PLOT_MEDIA_TYPES:
            raise HTTPException(404, f"no plot format {fmt!r} (svg or png)")
        return Response(_proposal_plot(campaign_id, pending_or_404(campaign_id), fmt), media_type=PLOT_MEDIA_TYPES[fmt])

    @app.post("/campaigns/{campaign_id}/decision")
    def decision_form(campaign_id: str, action: str = Form(...), by: str = Form(...), note: str = Form(""),
                      add: str = Form(""), drop: list[str] = Form(default_factory=list),
                      veto: list[str] = Form(default_factory=list), proposal: str = Form(""),
                      csrf: str = Form(""), session: WebSession | None = Depends(authorised)):  # noqa: ANN202
        check_csrf(session, csrf)
        campaign_or_404(campaign_id)
        if action not in ("approve", "reject"):
            raise HTTPException(400, f"unknown action {action!r}")
        if not proposal:
            raise HTTPException(409, "the form names no proposal: reload the campaign page and decide there")
        try:
            d = DecisionIn(drop=[] if action == "reject" else drop, add=[] if action == "reject" else _split_genes(add),
                           veto=veto, reject=action == "reject", note=note, by=by.strip(), proposal=proposal)
            record(campaign_id, d)
        except (PerturbloopError, ValueError) as e:
            return RedirectResponse(f"/campaigns/{campaign_id}?{urlencode({'error': str(e)})}", status_code=303)
        return RedirectResponse(f"/campaigns/{campaign_id}", status_code=303)

    @app.get("/api/campaigns", dependencies=[Depends(authorised)])
    def api_campaigns() -> list[dict]:
        return campaign_overview(store)

    @app.get("/api/campaigns/{campaign_id}/proposal", dependencies=[Depends(authorised)])
    def api_proposal(campaign_id: str) -> dict:
        return pending_or_404(campaign_id)

    @app.post("/api/campaigns/{campaign_id}/decision")
    def api_decision(request: Request, campaign_id: str, body: DecisionIn,
                     session: WebSession | None = Depends(authorised)) -> dict:
        check_csrf(session, request.headers.get(CSRF_HEADER))
        campaign_or_404(campaign_id)
        try:
            return record(campaign_id, body)
        except PerturbloopError as e:
            raise HTTPException(400, str(e)) from None

    return app


def _local_path(path: str) -> str:
    """`path` if it is a path on this app (where to go after logging in), else `/`: never another site."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


PLOT_WIDTH_IN = 9.0  # the figure's width; the page scales it to its own width (SVG, `width: 100%`)
PLOT_MAX_TICK_LABELS = 48  # more picks than this: the x axis shows ranks, the table below names them
PLOT_MEDIA_TYPES = {"svg": "image/svg+xml", "png": "image/png"}


def _proposal_plot(campaign_id: str, p: dict, fmt: str = "svg") -> bytes:
    """Each proposed perturbation's prediction in the screen's units (`p["items"]`' `predicted` with its
    `predicted_low`..`predicted_high` interval), or its probability of being a hit where the model predicts
    no value (hit calls), in proposal order; a fixed-width figure the page scales to fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    value = p.get("has_value", True)
    key = "predicted" if value else "p_hit"
    items = [i for i in p["items"] if i.get(key) is not None]
    fig, ax = plt.subplots(figsize=(PLOT_WIDTH_IN, 3.4), dpi=100)
    if items:
        x = list(range(1, len(items) + 1))
        y = [i[key] for i in items]
        if value:
            err = [[v - i["predicted_low"] for v, i in zip(y, items)], [i["predicted_high"] - v for v, i in zip(y, items)]]
            ax.errorbar(x, y, yerr=err, fmt="o", ms=3, capsize=2)
        else:
            ax.bar(x, y, width=0.8)
            ax.set_ylim(0, 1)
        if len(items) <= PLOT_MAX_TICK_LABELS:
            ax.set_xticks(x, [i["perturbation"] for i in items], rotation=90, fontsize=7)
        else:
            ax.set_xlabel("rank in the proposal (the table names each)", fontsize=8)
        ax.set_ylabel(p.get("label", "predicted") if value else "probability of a hit", fontsize=8)
    else:
        ax.text(0.5, 0.5, "chosen from priors: no model predictions yet", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title(f"{campaign_id}: round {p['round']} proposal", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    plt.close(fig)
    return buf.getvalue()


def serve(store: str | None, token: str, host: str = "127.0.0.1", port: int = 8765, data_dir: str | None = None) -> None:
    """Run the app with uvicorn (access log on: it shows paths only, never the token)."""
    import uvicorn

    uvicorn.run(create_app(store, token, data_dir), host=host, port=port, log_level="info")
