#!/usr/bin/env bash
# The recording run: the five recorded benchmarks, each recording its section in bench/RESULTS.md.
# Run on a quiet machine; needs `apt-get install nginx-light aria2` and a local PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
uv sync
exec uv run python -m bench.run_all "$@"
