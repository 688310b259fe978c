"""The fleet mirror: a content-addressed copy of the catalog's files in an S3-compatible bucket.

Network code (boto3, upstream reads) lives here, outside the core: the core keeps
the ledger (`depman.core.mirror`) and takes the presigner as a callable; the
server wires the two (`MirrorService`, `FillWorker`).
"""

from depman.mirror.service import MirrorService
from depman.mirror.worker import FillWorker

__all__ = ["FillWorker", "MirrorService"]
