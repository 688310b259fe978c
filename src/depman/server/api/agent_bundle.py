"""`GET /agent/depman-agent.pyz`: the one-file agent, with its sha256 in a header."""

from __future__ import annotations

import hashlib
import logging

from fastapi import APIRouter, Response

from depman.errors import DepmanError

log = logging.getLogger(__name__)
router = APIRouter(tags=["agent bundle"])


class BundleUnavailable(DepmanError):
    """The agent bundle cannot be built in this installation."""

    code = "unavailable"
    status = 503


@router.get(
    "/agent/depman-agent.pyz",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}, 503: {}},
)
def agent_bundle() -> Response:
    """The zipapp `python3 depman-agent.pyz` runs; header `X-Depman-Agent-Sha256`."""
    try:
        from depman.agent.bundle import bundle_bytes
    except ImportError as exc:
        raise BundleUnavailable("the agent bundle is not available in this build") from exc
    data = bundle_bytes()
    return Response(
        data,
        media_type="application/zip",
        headers={
            "X-Depman-Agent-Sha256": hashlib.sha256(data).hexdigest(),
            "Content-Disposition": 'attachment; filename="depman-agent.pyz"',
        },
    )
