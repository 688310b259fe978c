"""A small, realistic fleet written straight into the tables, for the dashboard's own tests."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from depman.store.models import (
    Dep,
    Instance,
    InstanceDep,
    Job,
    JobDep,
    Profile,
    ProfileStaticDep,
    QueueItem,
    ServerType,
)

GiB = 1024**3
MiB = 1024**2

DEPS = [
    ("sdxl-base-1.0", "static", 6_938_078_334, "models/checkpoints/sd_xl_base_1.0.safetensors"),
    ("sdxl-vae", "static", 334_641_164, "models/vae/sdxl_vae.safetensors"),
    ("clip-vit-l", "static", 1_710_000_000, "models/clip/clip_l.safetensors"),
    ("lora-pixel-art", "dynamic", 170 * MiB, "models/loras/pixel-art-xl.safetensors"),
    ("lora-film-grain", "dynamic", 228 * MiB, "models/loras/film_grain.safetensors"),
    (
        "juggernaut-xl-v9",
        "dynamic",
        7_105_000_000,
        "models/checkpoints/juggernautXL_v9.safetensors",
    ),
    ("controlnet-canny-sdxl", "dynamic", 2_500_000_000, "models/controlnet/canny_sdxl.safetensors"),
]


def seed_fleet(session: Session, now: datetime, live_ttl: float = 90.0) -> None:
    """Insert deps, one profile, two server types, five instances, queue items and jobs."""
    for dep_id, kind, size, dest in DEPS:
        session.add(
            Dep(
                dep_id=dep_id,
                url=f"https://huggingface.co/org/{dep_id}/resolve/main/file.safetensors",
                auth="hf_token" if dep_id.startswith("sdxl") else "none",
                dest_relative_path=dest,
                sha256=("ab" * 32) if kind == "static" else None,
                expected_size_bytes=size,
                kind=kind,
                # A further source for the same bytes (shown on the catalog page).
                sources=[{"url": "https://mirror.example/sdxl-base.safetensors", "source": None,
                          "revision": None}] if dep_id == "sdxl-base-1.0" else None,
                created_at=now,
                updated_at=now,
            )
        )
    session.add(
        Profile(
            profile_id="sdxl-v1",
            prefetch_on_boot=True,
            dynamic_policy={"enabled": True, "maxDynamicBytes": 20 * GiB, "minFreeBytes": 5 * GiB},
            updated_at=now,
        )
    )
    for pos, dep_id in enumerate(["sdxl-base-1.0", "sdxl-vae", "clip-vit-l"]):
        session.add(ProfileStaticDep(profile_id="sdxl-v1", dep_id=dep_id, position=pos))
    session.add(ServerType(server_type="sdxl-worker", profile_id="sdxl-v1", updated_at=now))
    session.add(ServerType(server_type="flux-worker", profile_id=None, updated_at=now))

    def instance(iid: str, age: float | None, used: int, dyn: int, downloads: list[dict]) -> None:
        session.add(
            Instance(
                instance_id=iid,
                ip=f"10.0.0.{len(iid)}",
                server_type="sdxl-worker" if "flux" not in iid else "flux-worker",
                agent_version="depman-agent/0.1.0",
                registered_at=now - timedelta(hours=3),
                last_heartbeat_at=None if age is None else now - timedelta(seconds=age),
                disk_total_bytes=200 * GiB,
                disk_used_bytes=used,
                disk_free_bytes=200 * GiB - used,
                dynamic_bytes_used=dyn,
                queue_depth=len(downloads),
                downloading_dep_ids=[d["depId"] for d in downloads],
                failed_dep_ids=[],
                active_downloads=downloads,
                created_at=now - timedelta(days=1),
            )
        )

    instance(
        "vast-1001",
        4,
        120 * GiB,
        9 * GiB,
        [
            {
                "depId": "juggernaut-xl-v9",
                "bytesDone": 3 * GiB,
                "bytesTotal": 7_105_000_000,
                "bytesPerSecond": 85 * MiB,
            }
        ],
    )
    instance("vast-1002", 12, 188 * GiB, 19 * GiB, [])
    instance("vast-1003", 25, 60 * GiB, 1 * GiB, [])
    instance("vast-flux-7", live_ttl + 400, 90 * GiB, 0, [])
    instance("vast-1009", None, 0, 0, [])

    for iid in ("vast-1001", "vast-1002", "vast-1003", "vast-flux-7"):
        for dep_id in ("sdxl-base-1.0", "sdxl-vae", "clip-vit-l"):
            session.add(
                InstanceDep(
                    instance_id=iid, dep_id=dep_id, kind="static", since=now - timedelta(hours=2)
                )
            )
    session.add(
        InstanceDep(
            instance_id="vast-1001",
            dep_id="lora-pixel-art",
            kind="dynamic",
            since=now - timedelta(minutes=40),
        )
    )
    session.add(
        InstanceDep(
            instance_id="vast-1002",
            dep_id="lora-film-grain",
            kind="dynamic",
            since=now - timedelta(minutes=5),
        )
    )

    def item(
        iid: str,
        dep_id: str,
        state: str,
        op: str = "download",
        error: str | None = None,
        gen: int = 1,
        attempts: int = 0,
        priority: int = 0,
    ) -> None:
        session.add(
            QueueItem(
                instance_id=iid,
                dep_id=dep_id,
                generation=gen,
                op=op,
                state=state,
                priority=priority,
                attempts=attempts,
                error=error,
                enqueued_at=now - timedelta(minutes=3),
                started_at=now - timedelta(minutes=2) if state != "queued" else None,
                finished_at=now - timedelta(minutes=1)
                if state in ("succeeded", "failed")
                else None,
                updated_at=now,
            )
        )

    item("vast-1001", "juggernaut-xl-v9", "running")
    item("vast-1001", "controlnet-canny-sdxl", "queued")
    item("vast-1001", "lora-pixel-art", "succeeded", op="touch")
    item(
        "vast-1002",
        "controlnet-canny-sdxl",
        "failed",
        gen=2,
        attempts=3,
        error="HTTP 403 from huggingface.co: Missing HF_TOKEN",
    )
    item("vast-1003", "sdxl-base-1.0", "succeeded", priority=1)

    def job(
        job_id: str,
        state: str,
        iid: str | None,
        deps: list[str],
        minutes: float,
        error: str | None = None,
    ) -> None:
        created = now - timedelta(minutes=minutes)
        placed = created + timedelta(seconds=2) if iid else None
        ready = (
            placed + timedelta(seconds=30)
            if placed and state in ("ready", "running", "completed")
            else None
        )
        started = (
            ready + timedelta(seconds=1) if ready and state in ("running", "completed") else None
        )
        finished = started + timedelta(minutes=1) if started and state == "completed" else None
        session.add(
            Job(
                job_id=job_id,
                server_type="sdxl-worker",
                state=state,
                instance_id=iid,
                error=error,
                placements=1 if iid else 0,
                history=[],
                created_at=created,
                placed_at=placed,
                ready_at=ready,
                started_at=started,
                finished_at=finished or (now if state == "failed" else None),
                updated_at=now,
            )
        )
        for pos, dep_id in enumerate(deps):
            session.add(JobDep(job_id=job_id, dep_id=dep_id, position=pos))

    job(
        "job-a1",
        "waiting_deps",
        "vast-1001",
        ["sdxl-base-1.0", "juggernaut-xl-v9", "controlnet-canny-sdxl", "lora-pixel-art"],
        3,
    )
    job("job-a2", "running", "vast-1002", ["sdxl-base-1.0", "lora-film-grain"], 6)
    job("job-a3", "completed", "vast-1003", ["sdxl-base-1.0"], 30)
    job(
        "job-a4",
        "failed",
        "vast-1002",
        ["controlnet-canny-sdxl"],
        9,
        error="dep controlnet-canny-sdxl failed: HTTP 403 from huggingface.co",
    )
    job("job-a5", "pending", None, ["sdxl-base-1.0"], 1)
    session.commit()
