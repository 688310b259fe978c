"""The operator dashboard: server-rendered pages over `depman.core.overview`.

`mount(app)` adds the pages, the login, the refresh fragments and the static files.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from depman.server.dashboard import actions, auth, routes
from depman.server.errors import error_response

__all__ = ["mount"]


def _login_required(request: Request, exc: Exception) -> Response:
    """Pages redirect to /login; fragments (polled by JS) answer 401 in the API's error shape."""
    assert isinstance(exc, auth.LoginRequired)
    if exc.fragment:
        return error_response(401, "unauthorized", "Dashboard login required.",
                              {"Cache-Control": "no-store"})
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)


def mount(app: FastAPI) -> None:
    """Add the dashboard's routes, static files and login handling to `app`."""
    app.include_router(routes.public, include_in_schema=False)
    app.include_router(routes.page, include_in_schema=False)
    app.include_router(routes.fragment, include_in_schema=False)
    app.include_router(actions.router, include_in_schema=False)
    app.mount(
        routes.STATIC_PREFIX,
        StaticFiles(directory=str(routes.HERE / "static")),
        name="dashboard-static",
    )
    app.add_exception_handler(auth.LoginRequired, _login_required)
