"""One simulator process: plays a slice of the fleet's agents, prints its stats as JSON.

`--agent-kind v1` plays field agents (`bench/_fleet_sim.py`); `--agent-kind depman`
plays depman's own agent (`bench/_fleet_depman.py`: long-poll, early and progress
heartbeats).

Started by `bench.fleet`, which it tells when its agents are up and which tells
it the measured window (`Sim.handshake`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from bench._fleet_depman import DepmanAgent
from bench._fleet_sim import Agent, Sim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secret", default="")
    ap.add_argument("--server-type", default="bench")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--catalog", type=int, default=2000)
    ap.add_argument("--static", type=int, default=20)
    ap.add_argument("--inventory", type=int, default=200)
    ap.add_argument("--t0", type=float, required=True)
    ap.add_argument("--ramp", type=float, default=30)
    ap.add_argument("--max-seconds", type=float, default=3600,
                    help="Stop after this long whatever the window.")
    ap.add_argument("--booted-file", required=True)
    ap.add_argument("--window-file", required=True)
    ap.add_argument("--poll-seconds", type=float, default=5.0)
    ap.add_argument("--heartbeat-seconds", type=float, default=30.0)
    ap.add_argument("--download-seconds", type=float, default=2.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--agent-kind", choices=("v1", "depman"), default="v1")
    ap.add_argument("--long-poll-seconds", type=float, default=25.0)
    ap.add_argument("--out", help="Write the JSON report here instead of stdout.")
    args = ap.parse_args(argv)
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    agent_class = DepmanAgent if args.agent_kind == "depman" else Agent
    result = asyncio.run(Sim(args, agent_class).main())
    report = json.dumps(result) + "\n"
    if args.out:
        # A file, not stdout: reports past 64 KiB came back cut at the pipe buffer.
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(report)
    else:
        sys.stdout.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
