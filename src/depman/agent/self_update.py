"""Self-update: install the build the control plane offers (`agentUpdate`), then re-execute.

What is replaced is the zipapp this process runs from (``python3
depman-agent.pyz``, the deployment the server serves). An agent run from an
installed package (``depman agent``) does not rewrite the package: it logs the
offer once and goes on. For a build to be installed, every check must pass:

1. the offer names a version other than ours and a sha256 (required, always);
2. the sha256 is not one refused before: a rolled-back build for good; a download
   refused for its bytes (a mismatch, not a zipapp) until its backoff has passed,
   because a captive portal or a broken mirror may serve the right bytes later;
3. every host the download reaches, redirects included, is the control plane's
   own or in ``DM_ALLOWED_DOMAINS``;
4. the download (at most ``MAX_BUILD_BYTES``) has exactly that sha256 and is a
   zipapp with a ``__main__.py``.

The new file is written beside the zipapp, the current one is kept as
``<zipapp>.previous``, and ``os.replace`` swaps them, so the path always holds a
whole build. The agent then stops like on SIGTERM (downloads stop at a resumable
point) and ``reexec`` starts the new build in the same process; the watchdog of
``update_watchdog`` rolls back when it does not register.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from . import protocol as p
from .config import AgentConfig
from .errors import DomainNotAllowed, UpdateFailed, UpdateRefused
from .files import fsync_dir
from .http import open_url, redact_url
from .update_watchdog import (
    Pending,
    arm_at_start,
    confirm,
    forget_refused,
    load_refused,
    marker_path,
    remember_refused,
    start_watchdog,
)

log = logging.getLogger("depman.agent")
MAX_BUILD_BYTES = 32 * 1024**2  # the server's own limit
RETRY_MAX_SECONDS = 1800.0  # a failed or refused download is tried again, doubling to this
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def running_zipapp() -> Path | None:
    """The zipapp this agent runs from, or None when it runs from source or a package."""
    here = Path(os.path.abspath(__file__))
    for parent in here.parents:
        if parent.is_file():
            return parent if zipfile.is_zipfile(parent) else None
    return None


def restart_command(zipapp: Path) -> list[str]:
    """This process's command line (interpreter flags such as -I -S kept), to run again."""
    python = sys.executable or "python3"
    original = list(getattr(sys, "orig_argv", None) or [])  # Python 3.10+
    if original and os.path.isabs(original[0]) is False:
        original[0] = python
    if len(original) >= 2:
        return original
    return [python, str(zipapp), *sys.argv[1:]]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SelfUpdater:
    """Decides on each `agentUpdate` offer; ``offer`` answers True when a build is in place."""

    def __init__(self, config: AgentConfig, zipapp: Path | None = None) -> None:
        self.config = config
        self.zipapp = zipapp if zipapp is not None else running_zipapp()
        self.installed: Pending | None = None  # set once a new build is in place
        self._own_sha256: str | None = None
        self._retry_at = 0.0
        self._failures = 0
        self._said: set[str] = set()

    # -- start and registration -------------------------------------------
    def at_start(self) -> None:
        """A build still on probation whose watchdog is gone gets a new one."""
        if self.zipapp is not None:
            arm_at_start(self.config.state_path, self.config.update_probation_seconds)

    def registered(self) -> None:
        """Registering ends this build's probation."""
        confirm(self.config.state_path)

    # -- offers -----------------------------------------------------------
    def offer(self, update: Any) -> bool:
        """Consider an `agentUpdate`; True when the new build is installed (stop, reexec)."""
        if update is None or self.installed is not None:
            return False
        if not isinstance(update, dict):
            self._say_once("shape", "Ignoring an agentUpdate that is not an object")
            return False
        version = update.get("targetVersion")
        url = update.get("downloadUrl")
        sha256 = str(update.get("sha256") or "").lower()
        if not isinstance(version, str) or not version or version == p.AGENT_VERSION:
            return False
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or \
                not _SHA256_RE.match(sha256):
            self._say_once(f"bad:{version}", f"Ignoring agentUpdate to {version}: it needs an "
                           "http(s) downloadUrl and a sha256 (depman's agent always checks it)")
            return False
        if not self.config.self_update:
            self._say_once(f"off:{sha256}", f"Agent update to {version} offered; not installing "
                           "it (DM_SELF_UPDATE is off)")
            return False
        refused = load_refused(self.config.state_path).get(sha256)
        if refused is not None and not _retry_due(refused):
            self._say_once(f"refused:{sha256}", f"Not installing agent build {version} "
                           f"(sha256 {sha256[:12]}…): refused earlier: {refused.get('reason')}"
                           + ("" if _retry_time(refused) is None else "; trying again later"))
            return False
        if self.zipapp is None:
            self._say_once(f"source:{sha256}", f"Agent update to {version} offered; this agent "
                           "runs from an installed package, not depman-agent.pyz, so it does "
                           "not replace itself (upgrade the package, or run the zipapp)")
            return False
        if sha256 == self._running_sha256():
            self._say_once(f"same:{sha256}", f"Agent update to {version} is the build already "
                           f"running (it reports {p.AGENT_VERSION}); not installing it again")
            return False
        if time.monotonic() < self._retry_at:
            return False
        if refused is not None:
            log.info("Fetching agent build %s (sha256 %s…) again, refused earlier: %s",
                     version, sha256[:12], refused.get("reason"))
        try:
            self.installed = self.install(version, url, sha256)
        except UpdateRefused as exc:
            self._refuse(version, url, sha256, exc, refused)
            return False
        except UpdateFailed as exc:
            self._failures += 1
            delay = self._backoff(self._failures)
            self._retry_at = time.monotonic() + delay
            log.warning("Agent update to %s failed: %s; trying again in %.0f s",
                        version, exc.message, delay)
            return False
        if refused is not None:
            forget_refused(self.config.state_path, sha256)
        return True

    def _backoff(self, failures: int) -> float:
        base = self.config.update_retry_seconds
        return min(max(base, RETRY_MAX_SECONDS), base * 2 ** min(failures - 1, 30))

    def _refuse(self, version: str, url: str, sha256: str, exc: UpdateRefused,
                before: dict[str, Any] | None) -> None:
        """Record a download refused for its bytes; fetched again after a backoff."""
        failures = int((before or {}).get("failures") or 0) + 1
        delay = self._backoff(failures)
        remember_refused(self.config.state_path, sha256, version, exc.message,
                         retry_at=time.time() + delay, received=exc.received_sha256,
                         failures=failures)
        same = before is not None and exc.received_sha256 is not None and \
            before.get("received") == exc.received_sha256
        # The same wrong bytes again are no news: one error per distinct answer.
        (log.info if same else log.error)(
            "Refusing agent build %s from %s: %s; trying again in %.0f s",
            version, redact_url(url), exc.message, delay)

    def _allowed_hosts(self) -> tuple[str, ...]:
        """DM_ALLOWED_DOMAINS and the control plane's own host, which serves builds."""
        own = (urlsplit(self.config.api_base_url).hostname or "").lower()
        return (*self.config.allowed_domains, *((own,) if own else ()))

    def _say_once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning("%s", message)

    def _running_sha256(self) -> str | None:
        if self._own_sha256 is None and self.zipapp is not None:
            with contextlib.suppress(OSError):
                self._own_sha256 = file_sha256(self.zipapp)
        return self._own_sha256

    # -- install ----------------------------------------------------------
    def install(self, version: str, url: str, sha256: str) -> Pending:
        """Fetch, check and swap in the new build; keep the current one as ``.previous``."""
        assert self.zipapp is not None
        target = self.zipapp
        staged = target.with_name(f".{target.name}.{sha256[:12]}.download")
        previous = target.with_name(target.name + ".previous")
        log.info("Agent update %s -> %s offered: downloading %s", p.AGENT_VERSION, version,
                 redact_url(url))
        try:
            _download(url, staged, sha256, self._allowed_hosts())
            _check_zipapp(staged, sha256)
            os.chmod(staged, os.stat(target).st_mode & 0o7777)
            _keep_previous(target, previous)
            pending = Pending(from_version=p.AGENT_VERSION, to_version=version, sha256=sha256,
                              pyz=str(target), previous=str(previous),
                              command=restart_command(target))
            pending.save(marker_path(self.config.state_path))
            os.replace(staged, target)
            fsync_dir(target.parent)
        except OSError as exc:
            raise UpdateFailed(f"cannot write beside {target}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                staged.unlink()
        log.info("Agent build %s installed at %s (previous kept at %s); restarting into it",
                 version, target, previous)
        return pending

    def reexec(self) -> NoReturn:
        """Start the installed build in this process, with a watchdog for its probation."""
        assert self.installed is not None
        start_watchdog(self.config.state_path, self.installed,
                       self.config.update_probation_seconds)
        command = self.installed.command
        logging.shutdown()
        os.execv(command[0], command)


def _retry_time(entry: dict[str, Any]) -> float | None:
    """When a refused build may be fetched again; None for good (a rolled-back build)."""
    value = entry.get("retryAt")
    if isinstance(value, (int, float)):
        return float(value)
    if str(entry.get("reason") or "").startswith("rolled back"):
        return None
    # Recorded by an agent that refused downloads for good: due once more now.
    at = entry.get("at")
    return float(at) if isinstance(at, (int, float)) else 0.0


def _retry_due(entry: dict[str, Any]) -> bool:
    retry_at = _retry_time(entry)
    return retry_at is not None and time.time() >= retry_at


def _download(url: str, dest: Path, sha256: str, allowed_hosts: tuple[str, ...]) -> None:
    digest = hashlib.sha256()
    size = 0
    try:
        with open_url(url, timeout=p.HTTP_TIMEOUT_SECONDS, allowed_domains=allowed_hosts) \
                as response, dest.open("wb") as out:
            if response.status != 200:
                raise UpdateFailed(f"HTTP {response.status} from {redact_url(url)}")
            while chunk := response.read_some(p.CHUNK_BYTES):
                size += len(chunk)
                if size > MAX_BUILD_BYTES:
                    raise UpdateRefused(f"the build is over {MAX_BUILD_BYTES} bytes",
                                        "over-size")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except (OSError, http.client.HTTPException) as exc:
        raise UpdateFailed(f"cannot download {redact_url(url)}: {exc}") from exc
    except UpdateFailed:
        raise
    except DomainNotAllowed as exc:
        raise UpdateFailed(f"cannot download {redact_url(url)}: the host {exc.host!r} is "
                           "neither the control plane's nor in DM_ALLOWED_DOMAINS") from exc
    except Exception as exc:  # the agent's DownloadError (bad scheme, redirect loop)
        raise UpdateFailed(f"cannot download {redact_url(url)}: {exc}") from exc
    if digest.hexdigest() != sha256:
        raise UpdateRefused(f"sha256 mismatch: expected {sha256}, got {digest.hexdigest()} "
                            f"({size} bytes)", digest.hexdigest())


def _check_zipapp(path: Path, sha256: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise UpdateRefused(f"not a zipapp: {exc}", sha256) from exc
    if "__main__.py" not in names:
        raise UpdateRefused("not a zipapp: no __main__.py", sha256)


def _keep_previous(target: Path, previous: Path) -> None:
    """``previous`` becomes a copy of ``target`` (a hard link when the filesystem allows)."""
    tmp = previous.with_name(previous.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(target, tmp)
    except OSError:
        shutil.copy2(target, tmp)
    os.replace(tmp, previous)
