"""One depman download in its own process, so its peak RSS is measured alone.

    python -m bench._download_runner URL DEST SHA256 SIZE --connections N

Prints one JSON line: engine wall seconds (download + sha256 verify + rename),
whether it went segmented, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("dest", type=Path)
    parser.add_argument("sha256")
    parser.add_argument("size", type=int)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--min-segment-bytes", type=int, default=None)
    args = parser.parse_args(argv)

    from depman.agent.download import DownloadOptions, DownloadSpec, download_file

    options = DownloadOptions(allowed_domains=None, connections=args.connections)
    if args.min_segment_bytes:
        options.min_segment_bytes = args.min_segment_bytes
    spec = DownloadSpec(url=args.url, dest=args.dest, sha256=args.sha256,
                        expected_size=args.size)
    t0 = time.perf_counter()
    result = download_file(spec, options)
    wall = time.perf_counter() - t0
    ok = result.sha256 == args.sha256 and args.dest.stat().st_size == args.size
    print(json.dumps({
        "wall": wall,
        "segmented": bool(result.segmented),
        "ok": ok,
        "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
