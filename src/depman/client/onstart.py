"""`depman onstart`: the Vast.ai on-start script that installs and keeps the agent running.

The script downloads the agent from the control plane, refuses it unless its
sha256 equals the one the server publishes (`/agent/depman-agent.pyz.sha256`),
and runs it in the background under a restart loop with backoff (1 s doubling
to 60 s, back to 1 s after a run of a minute), logging to
`$WORKSPACE/depman-agent.log`; it says so on its own stdout (Vast's on-start log)
and leaves `$WORKSPACE/depman/stop.sh`, which stops the loop and the agent. It
holds no secret: the fleet secret and tokens come from the template's environment.
The agent finds its identity in Vast's own variables (`CONTAINER_ID`,
`VAST_CONTAINERLABEL`, `PUBLIC_IPADDR`).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from depman.client.api import AdminClient
from depman.client.errors import ClientError

# The script's text, with __URL__, __TYPE__, __TYPE_COMMENT__ and __STOP_SCRIPT__ to fill in.
TEMPLATE = Path(__file__).with_name("onstart.sh")
# What stops the agent and its loop; the on-start script leaves it in $WORKSPACE/depman/stop.sh.
STOP_TEMPLATE = Path(__file__).with_name("onstart_stop.sh")


def stop_script() -> str:
    """The bash script that stops the agent and the restart loop on an instance."""
    return STOP_TEMPLATE.read_text(encoding="utf-8")


def onstart_script(server_type: str, server_url: str | None) -> str:
    """The bash script; ``server_url`` None leaves DEPMAN_URL to the template's environment."""
    url = (server_url or "").rstrip("/")
    return (TEMPLATE.read_text(encoding="utf-8")
            .replace("__TYPE_COMMENT__", shlex.quote(server_type).replace("\n", " "))
            .replace("__URL__", _in_double_quotes(url))
            .replace("__TYPE__", _in_double_quotes(server_type))
            .replace("__STOP_SCRIPT__", stop_script().rstrip("\n")))


def _in_double_quotes(value: str) -> str:
    """``value`` safe inside "${VAR:-...}" (no expansion, no way out of the quotes)."""
    for ch in ("\\", "$", "`", '"', "}"):
        value = value.replace(ch, "\\" + ch)
    return value.replace("\n", " ")


def check_server_type(client: AdminClient, server_type: str) -> None:
    """A ClientError naming the known server types when `server_type` is not one of them.

    An agent of an unknown type is refused at register, so a script for one would only
    loop on that refusal on every rental started with it.
    """
    if client.get_document("serverTypes", server_type) is not None:
        return
    known = [str(t.get("serverType")) for t in client.list_server_types()]
    raise ClientError(
        f"server type {server_type!r} does not exist on {client.base_url} (known server "
        f"types: {', '.join(known) if known else 'none yet'}); declare it with `depman apply` "
        "first, or pass --no-check to print the script anyway"
    )
