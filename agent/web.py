"""The review web app (`perturbloop web`): campaigns, the pending proposal, approve / edit / reject.

A small FastAPI app over the store. Every page and API call but `/healthz` and `/login` needs
the access token: an `Authorization: Bearer TOKEN` header (API clients), or the HttpOnly,
SameSite=Strict cookie that `POST /login` sets after checking the token (browsers). A wrong or
missing token gets 401 and changes nothing. The token is compared in constant time and never
logged (it never appears in a URL).

A decision is validated exactly like `perturbloop approve` (`agent.approval.decide`), written
to the store at once (so it survives a crash of this server), and the campaign then advances in
a background thread to its next pause: the next proposal, the lab, or the end.

Routes: `GET /` campaigns, `GET /campaigns/{id}` rounds and the pending proposal,
`GET /campaigns/{id}/proposal.png` predicted effect +- sd, `POST /campaigns/{id}/decision` (form);
JSON: `GET /api/campaigns`, `GET /api/campaigns/{id}/proposal`, `POST /api/campaigns/{id}/decision`.
"""

from __future__ import annotations

import hmac
import io
import re
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from agent.approval import decide, pending_round
from agent.report import campaign_overview
from perturbloop.errors import PerturbloopError
from perturbloop.store import Decision, Store

COOKIE = "perturbloop_session"
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))


class DecisionIn(BaseModel):
    """A decision from an API client: approve (no edits), edit (drop/add) or reject."""

    drop: list[str] = Field(default_factory=list)
    add: list[str] = Field(default_factory=list)
    reject: bool = False
    note: str = ""
    by: str = Field(min_length=1, max_length=100)


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
        from perturbloop.config import parse_config

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
    app = FastAPI(title="perturbloop review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.advancer = advancer

    def _ok(candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), token.encode())

    def authorised(request: Request) -> None:
        header = request.headers.get("authorization", "")
        bearer = header[7:] if header.lower().startswith("bearer ") else None
        if not (_ok(bearer) or _ok(request.cookies.get(COOKIE))):
            raise HTTPException(401, "a valid access token is required", headers={"WWW-Authenticate": "Bearer"})

    def campaign_or_404(campaign_id: str) -> None:
        if store.get_campaign(campaign_id) is None:
            raise HTTPException(404, f"no campaign {campaign_id!r}")

    def pending_or_404(campaign_id: str) -> dict:
        campaign_or_404(campaign_id)
        p = pending(campaign_id)
        if p is None:
            raise HTTPException(404, f"campaign {campaign_id!r} has no pending proposal")
        return p

    def pending(campaign_id: str) -> dict | None:
        r = pending_round(store, campaign_id)
        if r is None:
            return None
        props = store.proposals(r.id)
        return {"round": r.index + 1, "items": [
            {"rank": p.rank + 1, "perturbation": p.perturbation, "mean": p.mean, "sd": p.sd,
             "acq_value": p.acq_value, "policy": p.policy, "rationale": p.rationale} for p in props]}

    def record(campaign_id: str, d: DecisionIn) -> dict:
        """Validate, store, then advance in the background; raises PerturbloopError on bad input."""
        if advancer.busy(campaign_id):
            raise PerturbloopError(f"campaign {campaign_id!r} is still advancing after the last decision")
        r = pending_round(store, campaign_id)
        if r is None:
            c = store.get_campaign(campaign_id)
            raise PerturbloopError(f"campaign {campaign_id!r} has no proposal awaiting approval (status: {c.status})")
        ctx = advancer.context(campaign_id)
        decision = decide(store, campaign_id, ctx.pool, drop=d.drop, add=d.add, reject=d.reject, note=d.note,
                          by=d.by, data_dir=data_dir)
        store.save_decision(Decision(round_id=r.id, **decision))
        advancer.start(campaign_id, decision)
        return decision

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):  # noqa: ANN202
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return TEMPLATES.TemplateResponse(request, "error.html", {"status": exc.status_code, "detail": exc.detail},
                                          status_code=exc.status_code, headers=exc.headers)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request):  # noqa: ANN202
        return TEMPLATES.TemplateResponse(request, "login.html", {})

    @app.post("/login")
    def login(token_in: str = Form(..., alias="token")):  # noqa: ANN202
        if not _ok(token_in):
            raise HTTPException(401, "wrong access token")
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(COOKIE, token_in, httponly=True, samesite="strict")
        return resp

    @app.post("/logout")
    def logout():  # noqa: ANN202
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    @app.get("/", response_class=HTMLResponse, dependencies=[Depends(authorised)])
    def index(request: Request):  # noqa: ANN202
        return TEMPLATES.TemplateResponse(request, "index.html", {"campaigns": campaign_overview(store), "store": store.url})

    @app.get("/campaigns/{campaign_id}", response_class=HTMLResponse, dependencies=[Depends(authorised)])
    def campaign_page(request: Request, campaign_id: str, error: str | None = None):  # noqa: ANN202
        campaign_or_404(campaign_id)
        overview = next(c for c in campaign_overview(store) if c["campaign"] == campaign_id)
        return TEMPLATES.TemplateResponse(request, "campaign.html", {
            "c": overview, "pending": pending(campaign_id), "busy": advancer.busy(campaign_id),
            "error": error, "advance_error": advancer.errors.get(campaign_id)})

    @app.get("/campaigns/{campaign_id}/proposal.png", dependencies=[Depends(authorised)])
    def proposal_png(campaign_id: str) -> Response:
        return Response(_proposal_plot(campaign_id, pending_or_404(campaign_id)), media_type="image/png")

    @app.post("/campaigns/{campaign_id}/decision", dependencies=[Depends(authorised)])
    def decision_form(campaign_id: str, action: str = Form(...), by: str = Form(...), note: str = Form(""),
                      add: str = Form(""), drop: list[str] = Form(default_factory=list)):  # noqa: ANN202
        campaign_or_404(campaign_id)
        if action not in ("approve", "reject"):
            raise HTTPException(400, f"unknown action {action!r}")
        try:
            d = DecisionIn(drop=[] if action == "reject" else drop, add=[] if action == "reject" else _split_genes(add),
                           reject=action == "reject", note=note, by=by.strip())
            record(campaign_id, d)
        except (PerturbloopError, ValueError) as e:
            return RedirectResponse(f"/campaigns/{campaign_id}?{_query(error=str(e))}", status_code=303)
        return RedirectResponse(f"/campaigns/{campaign_id}", status_code=303)

    @app.get("/api/campaigns", dependencies=[Depends(authorised)])
    def api_campaigns() -> list[dict]:
        return campaign_overview(store)

    @app.get("/api/campaigns/{campaign_id}/proposal", dependencies=[Depends(authorised)])
    def api_proposal(campaign_id: str) -> dict:
        return pending_or_404(campaign_id)

    @app.post("/api/campaigns/{campaign_id}/decision", dependencies=[Depends(authorised)])
    def api_decision(campaign_id: str, body: DecisionIn) -> dict:
        campaign_or_404(campaign_id)
        try:
            return record(campaign_id, body)
        except PerturbloopError as e:
            raise HTTPException(400, str(e)) from None

    return app


def _query(**kw: str) -> str:
    from urllib.parse import urlencode

    return urlencode(kw)


def _proposal_plot(campaign_id: str, p: dict) -> bytes:
    """Predicted effect +- sd of each proposed perturbation (error bars), in proposal order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [i for i in p["items"] if i["mean"] is not None]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(p["items"])), 3.2), dpi=100)
    if items:
        x = list(range(len(items)))
        ax.errorbar(x, [i["mean"] for i in items], yerr=[i["sd"] or 0.0 for i in items], fmt="o", ms=3, capsize=2)
        ax.set_xticks(x, [i["perturbation"] for i in items], rotation=90, fontsize=6)
        ax.set_ylabel("predicted objective +- sd")
    else:
        ax.text(0.5, 0.5, "round 1: chosen from priors, no model predictions yet", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title(f"{campaign_id}: round {p['round']} proposal", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def serve(store: str | None, token: str, host: str = "127.0.0.1", port: int = 8765, data_dir: str | None = None) -> None:
    """Run the app with uvicorn (access log on: it shows paths only, never the token)."""
    import uvicorn

    uvicorn.run(create_app(store, token, data_dir), host=host, port=port, log_level="info")
