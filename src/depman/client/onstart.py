"""`depman onstart`: the Vast.ai on-start script that installs and keeps the agent running.

The script downloads the agent from the control plane, refuses it unless its
sha256 equals the one the server publishes (`/agent/depman-agent.pyz.sha256`),
and runs it in the background under a restart loop with backoff (1 s doubling
to 60 s, back to 1 s after a run of a minute), logging to
`$WORKSPACE/depman-agent.log`. It holds no secret: the fleet secret and tokens
come from the template's environment. The agent finds its identity in Vast's
own variables (`CONTAINER_ID`, `VAST_CONTAINERLABEL`, `PUBLIC_IPADDR`).
"""

from __future__ import annotations

import shlex
from pathlib import Path

# The script's text, with __URL__, __TYPE__ and __TYPE_COMMENT__ to fill in.
TEMPLATE = Path(__file__).with_name("onstart.sh")



def onstart_script(server_type: str, server_url: str | None) -> str:
    """The bash script; ``server_url`` None leaves DEPMAN_URL to the template's environment."""
    url = (server_url or "").rstrip("/")
    return (TEMPLATE.read_text(encoding="utf-8")
            .replace("__TYPE_COMMENT__", shlex.quote(server_type).replace("\n", " "))
            .replace("__URL__", _in_double_quotes(url))
            .replace("__TYPE__", _in_double_quotes(server_type)))


def _in_double_quotes(value: str) -> str:
    """``value`` safe inside "${VAR:-...}" (no expansion, no way out of the quotes)."""
    for ch in ("\\", "$", "`", '"', "}"):
        value = value.replace(ch, "\\" + ch)
    return value.replace("\n", " ")
