"""`depman server`: settings from flags > env > defaults, migrations, a bound socket, uvicorn."""

from __future__ import annotations

import gc
import logging
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from types import FrameType

import uvicorn
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from depman.errors import ConfigError
from depman.server.logsafe import EscapingFormatter
from depman.settings import ServerSettings
from depman.store.migrate import upgrade

log = logging.getLogger("depman.server")
GRACEFUL_SHUTDOWN_SECONDS = 5


class _Server(uvicorn.Server):
    """Announces the URL once uvicorn accepts connections on the bound socket."""

    def __init__(self, config: uvicorn.Config, banner: str, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._banner = banner
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # Long-polls would otherwise hold the graceful shutdown for their full wait.
        self._on_exit()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._banner:
            print(self._banner, flush=True)


def build_settings(**flags: object) -> ServerSettings:
    """Flags that were given override the environment, which overrides defaults."""
    given = {key: value for key, value in flags.items() if value is not None}
    try:
        return ServerSettings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        # Never the input: it holds the secrets.
        problems = "; ".join(
            ".".join(str(part) for part in err["loc"]) + (": " if err["loc"] else "") + err["msg"]
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(f"invalid server settings: {problems}") from None


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # Messages that quote client input cannot forge lines (server/logsafe.py).
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def _warn_about_open_doors(settings: ServerSettings) -> None:
    if settings.shared_secret is None or not settings.shared_secret.get_secret_value():
        log.warning(
            "REGISTER IS OPEN: no DEPENDENCY_MANAGER_SHARED_SECRET is set, so anyone who can "
            "reach this server can register an agent and read the catalog's resolved URLs. "
            "Set a secret of at least 16 characters unless the network is trusted."
        )
    if settings.allow_any_destination:
        log.warning(
            "DEPMAN_ALLOW_ANY_DESTINATION is on: catalog entries may write outside models/, "
            "including code ComfyUI executes"
        )


def _raise_file_limit(connections: int) -> None:
    """Let the process hold `connections` sockets (plus files and database connections)
    if the hard limit allows."""
    wanted = connections + 256
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
    if target < connections:
        log.warning(
            "open-file limit %d is below max_connections %d: connections past it are refused",
            target,
            connections,
        )


def serve(settings: ServerSettings) -> None:
    """Migrate, bind, run (in `settings.workers` processes) until SIGTERM/SIGINT."""
    _configure_logging(settings.log_level)
    _warn_about_open_doors(settings)
    _raise_file_limit(settings.max_connections)
    open_database(settings.database_url)
    sock = listen_on(settings.host, settings.port)
    url = _url_of(sock)
    api_sock = None if settings.api_port is None else listen_on(settings.host, settings.api_port)
    forked = settings.workers > 1 or api_sock is not None
    metrics_dir = _prepare_metrics_dir(forked)
    if not forked:
        try:
            _serve_one(settings, sock, url, announce=True)
        finally:
            sock.close()
        return
    from depman.server.metrics import process_exited
    from depman.server.workers import serve_workers

    def run_worker(index: int) -> None:
        if index < settings.workers:
            _serve_one(settings, sock, url, announce=index == 0)
        else:
            assert api_sock is not None
            _serve_one(settings, api_sock, _url_of(api_sock), announce=True, role="api")

    processes = settings.workers + (api_sock is not None)
    log.info(
        "starting %d server worker%s%s",
        settings.workers,
        "" if settings.workers == 1 else "s",
        " and the job API's process" if api_sock is not None else "",
    )
    try:
        code = serve_workers(processes, sock, run_worker, on_exit=process_exited)
    finally:
        if api_sock is not None:
            api_sock.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    raise SystemExit(code)


def _prepare_metrics_dir(forked: bool) -> str | None:
    """Set up the shared metric files of several processes; the directory to remove at
    exit when it is this run's own (an operator's PROMETHEUS_MULTIPROC_DIR is kept)."""
    from depman.server import metrics

    given = metrics.multiprocess_dir()
    if not forked and given is None:
        return None
    path = given or tempfile.mkdtemp(prefix="depman-metrics-")
    metrics.use_multiprocess_dir(path)
    return None if given else path


def open_database(url: str) -> None:
    """Migrate the database, or a ConfigError of one line saying why it cannot be used."""
    try:
        upgrade(url)
    except (SQLAlchemyError, OSError) as exc:
        cause = getattr(exc, "orig", None) or exc
        reason = " ".join(str(cause).split()) or type(cause).__name__
        shown = make_url(url).render_as_string(hide_password=True) if "://" in url else url
        raise ConfigError(
            f"cannot use the database {shown}: {reason} "
            "(check --database-url or DEPMAN_DATABASE_URL, and that the database exists)"
        ) from None


def listen_on(host: str, port: int) -> socket.socket:
    """A bound socket, or a ConfigError of one line (the port taken, an unknown address)."""
    try:
        return bind_socket(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _serve_one(
    settings: ServerSettings,
    sock: socket.socket,
    url: str,
    *,
    announce: bool,
    role: str = "agents",
) -> None:
    """One server process: the app, its pool and memos, uvicorn on the shared socket.

    `role` "api": the process of `api_port`, announced as the job and admin API.
    """
    from depman.server.app import create_app, served_app
    from depman.server.http_protocol import GuardedHttpToolsProtocol

    app = create_app(settings)
    protocol = GuardedHttpToolsProtocol.configured(
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        max_header_bytes=settings.max_header_bytes,
    )
    config = uvicorn.Config(
        served_app(app),
        http=protocol,
        ws="none",
        log_level=settings.log_level.lower(),
        access_log=False,  # agents poll constantly; the latency histogram covers requests
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=int(settings.keep_alive_seconds),
        limit_concurrency=settings.max_connections,
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies,
        server_header=False,
    )
    banner = "job and admin API on" if role == "api" else "depman server listening on"
    server = _Server(
        config, f"{banner} {url}" if announce else "", on_exit=app.state.depman.cache.hub.wake_all
    )
    _tune_gc()
    server.run(sockets=[sock])


def _tune_gc() -> None:
    # The ~170,000 objects of the imported modules and the app live as long as the
    # process; frozen, a full collection no longer walks them. Under fleet load the
    # full collections stopped every request for 120-170 ms each.
    gc.collect()
    gc.freeze()
    # Young collections every 10,000 net allocations instead of 700: a request
    # allocates hundreds of objects, and nearly all die by reference counting. The
    # older generations wait twice as many young ones as by default (20, not 10).
    gc.set_threshold(10_000, 20, 20)


def serve_from_flags(
    *,
    host: str | None = None,
    port: int | None = None,
    database_url: str | None = None,
    log_level: str | None = None,
    workers: int | None = None,
    api_port: int | None = None,
) -> None:
    """Entry point of `depman server`."""
    try:
        settings = build_settings(
            host=host,
            port=port,
            database_url=database_url,
            log_level=log_level,
            workers=workers,
            api_port=api_port,
        )
        serve(settings)
    except ConfigError as exc:
        print(f"depman server: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
