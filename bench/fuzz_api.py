"""`python -m bench.fuzz_api`: the schemathesis run of the test suite, longer.

`tests/server/test_api_fuzz.py` sends a few generated requests per operation
and mode (valid, invalid) to a live server on SQLite and PostgreSQL, with valid
admin and agent credentials, and fails on any 5xx, schema violation or traceback
in the server log. Here the same test runs with `--examples` per operation and
mode (default 200). It measures no speed: it prints pass/fail and how long it took.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

TEST = "tests/server/test_api_fuzz.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="Per operation and mode.")
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="Comma-separated: sqlite, postgresql."
    )
    parser.add_argument("--smoke", action="store_true", help="2 examples, SQLite only.")
    args = parser.parse_args()
    examples = 2 if args.smoke else args.examples
    backends = ["sqlite"] if args.smoke else args.backends.split(",")
    env = {**os.environ, "DEPMAN_FUZZ_EXAMPLES": str(examples)}
    start = time.monotonic()
    code = subprocess.call(
        [
            sys.executable,
            "-m",
            "pytest",
            TEST,
            "-q",
            "-p",
            "no:randomly",
            "-k",
            " or ".join(backends),
        ],
        env=env,
    )
    verdict = "no server errors, no schema violations" if code == 0 else "FAILURES (see above)"
    print(
        f"fuzz_api: {examples} examples per operation and mode on {', '.join(backends)}: "
        f"{verdict} in {time.monotonic() - start:.0f} s"
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
