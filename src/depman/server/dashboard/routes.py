"""The dashboard's pages and the fragments they refresh themselves with.

Handlers stay thin: check access, ask `depman.core.overview`, render a template.
Each page has a fragment twin (`/fragments/...`) that answers only the part that
changes; `static/dashboard.js` polls it and swaps it in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from depman.core import overview
from depman.core.audit import action_document, list_actions
from depman.core.clock import utcnow
from depman.core.dep_holders import dep_locations
from depman.core.sessions import revoke
from depman.errors import AuthError, NotFound, TooManyFailures
from depman.server.auth import attempt
from depman.server.dashboard import auth
from depman.server.dashboard.csrf import csrf_token
from depman.server.dashboard.format import FILTERS
from depman.server.deps import FreshReadSessionDep as SessionDep
from depman.server.state import client_address, server_state

HERE = Path(__file__).parent
STATIC_PREFIX = "/dashboard/static"
REFRESH_MS = 2000
# No inline <script>, nothing remote; bar widths are inline style attributes.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        "style-src-attr 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Fleet data never lingers in a browser cache.
    "Cache-Control": "no-store",
}

templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(FILTERS)
templates.env.globals.update(static_prefix=STATIC_PREFIX, refresh_ms=REFRESH_MS)


page = APIRouter(dependencies=[Depends(auth.require_page)])
fragment = APIRouter(prefix="/fragments", dependencies=[Depends(auth.require_fragment)])
public = APIRouter()


def _live_ttl(request: Request) -> float:
    return float(server_state(request).settings.live_ttl)


def _render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    # Every page's action forms carry the session's CSRF token (dashboard/csrf.py).
    context = {"csrf": csrf_token(request), **context}
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


# --- fleet ---------------------------------------------------------------


def _fleet(request: Request, session: Session) -> dict[str, Any]:
    fleet = overview.fleet_overview(session=session, now=utcnow(), live_ttl=_live_ttl(request))
    return {"nav": "fleet", "fleet": fleet}


@page.get("/", response_class=HTMLResponse, name="dashboard-fleet")
def fleet_page(request: Request, session: SessionDep) -> Response:
    """Fleet overview."""
    return _render(request, "fleet.html", _fleet(request, session))


@fragment.get("/fleet", response_class=HTMLResponse)
def fleet_fragment(request: Request, session: SessionDep) -> Response:
    """The refreshing part of the fleet overview."""
    return _render(request, "_fleet.html", _fleet(request, session))


# --- one instance ------------------------------------------------------------


def _instance(request: Request, session: Session, instance_id: str) -> dict[str, Any] | None:
    try:
        detail = overview.instance_detail(
            instance_id, session=session, now=utcnow(), live_ttl=_live_ttl(request)
        )
    except NotFound:
        return None
    actions = [
        action_document(row)
        for row in list_actions(session=session, instance_id=instance_id, limit=20)
    ]
    return {
        "nav": "fleet",
        "detail": detail,
        "instance_id": instance_id,
        "actions": actions,
        "page_path": f"/instances/{quote(instance_id, safe='')}",
    }


@page.get("/instances/{instance_id}", response_class=HTMLResponse)
def instance_page(request: Request, session: SessionDep, instance_id: str) -> Response:
    """One instance: inventory, pins, queue, jobs."""
    context = _instance(request, session, instance_id)
    if context is None:
        return _render(
            request, "not_found.html", {"nav": "fleet", "what": f"instance {instance_id}"}, 404
        )
    return _render(request, "instance.html", context)


@fragment.get("/instances/{instance_id}", response_class=HTMLResponse)
def instance_fragment(request: Request, session: SessionDep, instance_id: str) -> Response:
    """The refreshing part of the instance page."""
    context = _instance(request, session, instance_id)
    if context is None:
        return _render(request, "_not_found.html", {"what": f"instance {instance_id}"}, 404)
    return _render(request, "_instance.html", context)


# --- catalog ---------------------------------------------------------------


def _catalog(request: Request, session: Session) -> dict[str, Any]:
    rows = overview.catalog_overview(session=session, now=utcnow(), live_ttl=_live_ttl(request))
    return {"nav": "catalog", "deps": rows}


@page.get("/catalog", response_class=HTMLResponse)
def catalog_page(request: Request, session: SessionDep) -> Response:
    """Every dep and where it is."""
    return _render(request, "catalog.html", _catalog(request, session))


@fragment.get("/catalog", response_class=HTMLResponse)
def catalog_fragment(request: Request, session: SessionDep) -> Response:
    """The refreshing part of the catalog."""
    return _render(request, "_catalog.html", _catalog(request, session))


@page.get("/catalog/{dep_id}", response_class=HTMLResponse)
def dep_page(request: Request, session: SessionDep, dep_id: str) -> Response:
    """One dep: the instances that hold it (or download it), and the file's state there."""
    now = utcnow()
    try:
        rows = dep_locations(dep_id, session=session, now=now, live_ttl=_live_ttl(request))
    except NotFound:
        return _render(request, "not_found.html", {"nav": "catalog", "what": f"dep {dep_id}"}, 404)
    context = {"nav": "catalog", "dep_id": dep_id, "locations": rows, "now": now}
    return _render(request, "dep.html", context)


# --- jobs --------------------------------------------------------------------

StateQuery = Annotated[str | None, Query(max_length=40)]


def _jobs(session: Session, state: str | None) -> dict[str, Any]:
    wanted = state if state in overview.JOB_STATES else None
    jobs = overview.jobs_overview(session=session, now=utcnow(), state=wanted)
    page_path = "/jobs" + (f"?state={quote(wanted)}" if wanted else "")
    return {"nav": "jobs", "jobs": jobs, "states": overview.JOB_STATES, "page_path": page_path}


@page.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep, state: StateQuery = None) -> Response:
    """Jobs: state, instance, what they wait for, timing."""
    return _render(request, "jobs.html", _jobs(session, state))


@fragment.get("/jobs", response_class=HTMLResponse)
def jobs_fragment(request: Request, session: SessionDep, state: StateQuery = None) -> Response:
    """The refreshing part of the jobs page."""
    return _render(request, "_jobs.html", _jobs(session, state))


# --- audit log ---------------------------------------------------------------


def _audit(session: Session) -> dict[str, Any]:
    rows = list_actions(session=session, limit=200)
    return {"nav": "audit", "actions": [action_document(row) for row in rows]}


@page.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, session: SessionDep) -> Response:
    """Every operator action: who, what, when."""
    return _render(request, "audit.html", _audit(session))


@fragment.get("/audit", response_class=HTMLResponse)
def audit_fragment(request: Request, session: SessionDep) -> Response:
    """The refreshing part of the audit log."""
    return _render(request, "_audit.html", _audit(session))


# --- login -------------------------------------------------------------------


@public.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    """The token form."""
    if auth.is_authenticated(request):
        return RedirectResponse(auth.safe_next(next), status_code=303)
    return _render(
        request,
        "login.html",
        {"next": auth.safe_next(next), "error": None, "closed": auth.admin_token(request) is None},
    )


@public.post("/login", response_class=HTMLResponse)
def login_submit(
    request: Request,
    token: Annotated[str, Form(max_length=4096)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    """Check the token; on success set the session cookie (never the token itself)."""
    configured = auth.admin_token(request)
    state = server_state(request)
    context = {"next": auth.safe_next(next), "closed": configured is None}
    try:
        with attempt(state, "login", client_address(request)):
            if not auth.token_matches(token, configured):
                raise AuthError("wrong admin token" if configured else "no admin token configured")
    except TooManyFailures as exc:
        error = f"Too many failed attempts from this address; retry in {exc.retry_after} s."
        response = _render(request, "login.html", {**context, "error": error}, 429)
        response.headers.update(exc.headers)
        return response
    except AuthError:
        error = "Invalid token." if configured else "The server has no admin token configured."
        return _render(request, "login.html", {**context, "error": error}, 401)
    assert configured is not None
    response = RedirectResponse(auth.safe_next(next), status_code=303)
    response.set_cookie(
        auth.COOKIE_NAME,
        auth.make_session(configured),
        max_age=auth.SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@public.post("/logout")
def logout(request: Request) -> Response:
    """Revoke the session (every server process refuses it from now on); drop the cookie."""
    # Only a session this server signed is recorded: a forged cookie cannot fill the table.
    current = auth.verified_session(
        request.cookies.get(auth.COOKIE_NAME), auth.admin_token(request)
    )
    if current is not None:
        with server_state(request).db.session() as session:
            revoke(current.session_id, current.expires, session=session)
            session.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return response
