"""Read models of the dashboard: the fleet, one instance, the catalog, the jobs.

Pure queries over the store, no HTTP: each function takes a session and the
current time, and answers plain dataclasses (`rows.py`) that a template or a
test reads. Nothing here writes.
"""

from __future__ import annotations

from depman.core.overview.fleet import catalog_overview, fleet_overview
from depman.core.overview.instance import instance_detail
from depman.core.overview.jobs import jobs_overview
from depman.core.overview.rows import (
    JOB_STATES,
    CatalogRow,
    Download,
    FleetOverview,
    InstanceDetail,
    InstanceRow,
    JobRow,
    JobsOverview,
    parse_downloads,
)

__all__ = [
    "JOB_STATES",
    "CatalogRow",
    "Download",
    "FleetOverview",
    "InstanceDetail",
    "InstanceRow",
    "JobRow",
    "JobsOverview",
    "catalog_overview",
    "fleet_overview",
    "instance_detail",
    "jobs_overview",
    "parse_downloads",
]
