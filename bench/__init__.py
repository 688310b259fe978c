"""depman's benchmarks: each module is one command (`uv run python -m bench.NAME`)."""
