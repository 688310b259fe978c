"""Who this agent says it is on register: its own settings first, else what Vast.ai sets.

On Vast.ai every container has ``CONTAINER_ID`` (the instance id, a number),
``VAST_CONTAINERLABEL`` (``C.<id>``) and ``PUBLIC_IPADDR``, so an onstart script
needs no per-instance setting. Start-up logs which variable each value came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ID_SOURCES = ("DM_INSTANCE_ID", "CONTAINER_ID", "VAST_CONTAINERLABEL")
IP_SOURCES = ("DM_INSTANCE_IP", "PUBLIC_IPADDR")


@dataclass(frozen=True)
class Identity:
    instance_id: str | None
    instance_id_source: str | None
    instance_ip: str | None
    instance_ip_source: str | None

    def describe(self) -> str:
        parts = []
        if self.instance_id:
            parts.append(f"instanceId {self.instance_id} (from {self.instance_id_source})")
        if self.instance_ip:
            parts.append(f"instanceIp {self.instance_ip} (from {self.instance_ip_source})")
        if not parts:
            return ("no instance id or IP (set DM_INSTANCE_ID, or run on Vast.ai where "
                    "CONTAINER_ID / PUBLIC_IPADDR are set): the server must recognise this "
                    "agent some other way")
        return ", ".join(parts)


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str | None, str | None]:
    for name in names:
        value = env.get(name, "").strip()
        if name == "VAST_CONTAINERLABEL" and value[:2] in ("C.", "c."):
            value = value[2:]
        if value:
            return value, name
    return None, None


def identity_from_env(env: Mapping[str, str]) -> Identity:
    instance_id, id_source = _first(env, ID_SOURCES)
    instance_ip, ip_source = _first(env, IP_SOURCES)
    return Identity(instance_id, id_source, instance_ip, ip_source)
