"""Run the five recorded benchmarks in sequence, each recording its section in bench/RESULTS.md.

    uv run python -m bench.run_all            # the recording run (~70 min; quiet machine)
    uv run python -m bench.run_all --smoke    # all five smoke modes, records nothing

The chaos soak (`bench.chaos --record`) and the API fuzz run (`bench.fuzz_api`, which
records nothing) are run on their own.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import REPO_ROOT, machine_info

ORDER = ("placement", "inventory_check", "download", "dispatch", "fleet_boot", "fleet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", help="Comma-separated subset of " + ",".join(ORDER))
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(ORDER)
    print(f"machine: {machine_info().line()}")
    failed = []
    for name in names:
        cmd = [sys.executable, "-m", f"bench.{name}", *(["--smoke"] if args.smoke else [])]
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        code = subprocess.call(cmd, cwd=REPO_ROOT)
        print(f"=== bench.{name}: exit {code} after {time.monotonic() - t0:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
