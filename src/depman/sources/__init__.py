"""Model sources: `hf://` and `civitai://` URLs resolved into download URL, sha256 and size.

The server resolves a catalog entry's sources when it is put (`depman apply`,
the admin API, `depman workflow import`), so operators never copy hashes by hand
and every node downloads the same pinned bytes. HTTP lives here, not in `core`:
`core.catalog.put_dep` takes the resolver as a callable.
"""

from depman.sources.resolver import SourceResolver

__all__ = ["SourceResolver"]
