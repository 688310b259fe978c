"""``depman agent`` / ``python3 depman-agent.pyz``: configuration, signals, exit codes."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from . import protocol as p
from .config import AgentConfig, parse_byte_size
from .errors import AgentError, ConfigError
from .identity import Identity
from .redact import install_log_redaction, redact, redact_url

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_FORCED = 130

log = logging.getLogger("depman.agent")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="depman agent",
        description="The depman node agent. Configured by environment variables "
                    "(see docs/agent.md); with no command it runs.")
    parser.add_argument("--version", action="version", version=p.AGENT_VERSION)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the agent (the default)")
    bundle = sub.add_parser("bundle", help="write the one-file zipapp")
    bundle.add_argument("-o", "--output", default="depman-agent.pyz")
    fetch = sub.add_parser("fetch", help="download one file with the agent's engine")
    fetch.add_argument("url")
    fetch.add_argument("dest", type=Path)
    fetch.add_argument("--sha256")
    fetch.add_argument("--size", type=int, help="expected size in bytes")
    fetch.add_argument("--connections", type=int, default=p.DEFAULT_DOWNLOAD_CONNECTIONS)
    fetch.add_argument("--min-segment", default=str(p.DEFAULT_MIN_SEGMENT_BYTES))
    fetch.add_argument("--allow-domain", action="append",
                       help="allowed host (repeatable); default: any host")
    fetch.add_argument("--auth-env", help="env var holding a token sent as Bearer")
    return parser


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    install_log_redaction()


def _install_signals(on_first: object) -> None:
    """First SIGTERM/SIGINT: finish to a resumable point and exit 0. Second: exit now."""
    if threading.current_thread() is not threading.main_thread():
        return
    received = {"count": 0}

    # The handler runs between two bytecodes of the main thread, which may be in the
    # middle of writing a log line: logging from here directly would re-enter stderr.
    def handler(signum: int, frame: FrameType | None) -> None:
        received["count"] += 1
        name = signal.Signals(signum).name
        if received["count"] == 1:
            threading.Thread(target=log.info, name="signal-log", args=(
                "Received %s: stopping after the current step (send again to stop now)", name,
            )).start()
            on_first()  # type: ignore[operator]
        else:
            with contextlib.suppress(OSError):
                os.write(2, f"Received {name} again: stopping now\n".encode())
            os._exit(EXIT_FORCED)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_fetch(args: argparse.Namespace) -> int:
    from .download import DownloadOptions, DownloadSpec, download_file
    from .progress import Progress

    token = os.environ.get(args.auth_env, "") if args.auth_env else ""
    stop = threading.Event()
    _install_signals(stop.set)
    spec = DownloadSpec(url=args.url, dest=args.dest, sha256=args.sha256,
                        expected_size=args.size,
                        authorization=f"Bearer {token}" if token else None,
                        label=args.dest.name)
    options = DownloadOptions(allowed_domains=args.allow_domain, connections=args.connections,
                              min_segment_bytes=parse_byte_size(args.min_segment), stop=stop,
                              progress=Progress(args.dest.name, log_every=2.0))
    result = download_file(spec, options)
    print(f"{result.sha256}  {result.path}  {result.size} bytes"
          f"{' segmented' if result.segmented else ''} resumed_from={result.resumed_from}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    _setup_logging()
    if args.command == "bundle":
        from .bundle import write_bundle

        digest = write_bundle(Path(args.output))
        print(f"{digest}  {args.output}")
        return EXIT_OK
    try:
        if args.command == "fetch":
            return run_fetch(args)
        config = AgentConfig.from_env(os.environ)
    except ConfigError as exc:
        print(f"depman agent: configuration error: {redact(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    except AgentError as exc:
        log.error("%s", exc.message)
        return EXIT_FAILED

    from .instance_lock import hold
    from .loop import Agent

    hold(config.state_path)  # before the state file is read
    try:
        agent = Agent(config)
    except ConfigError as exc:
        print(f"depman agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _install_signals(agent.request_stop)
    log.info("Starting %s (pid %d) for server type %s, ComfyUI at %s, API %s",
             p.AGENT_VERSION, os.getpid(), config.server_type, config.comfyui_dir,
             redact_url(config.api_base_url))
    log.info("Agent identity: %s", Identity(config.instance_id, config.instance_id_source,
                                            config.instance_ip,
                                            config.instance_ip_source).describe())
    try:
        code = agent.run()
    except Exception:
        log.exception("Agent crashed")
        return EXIT_FAILED
    if agent.updater.installed is not None:
        agent.updater.reexec()  # does not return
    return code
