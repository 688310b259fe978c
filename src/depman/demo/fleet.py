"""The demo fleet: generated model files, the fleet document that names them, and the jobs.

One server type (`demo-sdxl`) with two instances. Its profile holds two static
deps prefetched on boot (one behind a CDN-style redirect) and a small dynamic
cache cap, so the LoRAs, upscaler and ControlNet the jobs pull in evict each
other. One LoRA needs `HF_TOKEN`. Every dep carries its real sha256 and size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import yaml

from depman.demo.content import content_sha256
from depman.demo.origin import PRIVATE_ROUTE, PUBLIC_ROUTE, REDIRECT_ROUTE, file_path

MIB = 1024 * 1024
SERVER_TYPE = "demo-sdxl"
PROFILE_ID = "demo-sdxl"
INSTANCE_IDS = ("demo-a", "demo-b")
# The dynamic deps total 239 MiB, more than both caps together (224 MiB), so eviction must
# happen; yet each job's own dynamic deps (at most 104 MiB) fit one cap.
MAX_DYNAMIC_BYTES = 112 * MIB
MIN_FREE_BYTES = 256 * MIB
# Short, so a dep touched by the previous job may be evicted for the next one.
PIN_TTL_SECONDS = 3
EVICTION_BATCH_MAX = 4


@dataclass(frozen=True)
class DemoFile:
    """One generated model file and its catalog entry."""

    dep_id: str
    dest_relative_path: str
    size_mib: float
    kind: str  # "static" or "dynamic"
    route: str = PUBLIC_ROUTE

    @property
    def seed(self) -> str:
        return f"demo-{self.dep_id}"

    @property
    def auth(self) -> str:
        return "hf_token" if self.route == PRIVATE_ROUTE else "none"

    def size_bytes(self, scale: float = 1.0) -> int:
        """Size at this scale (at least 1 MiB, whole KiB)."""
        return max(MIB, int(self.size_mib * scale * MIB) // 1024 * 1024)


@dataclass(frozen=True)
class DemoJob:
    """A job the demo submits: a label and the deps it needs."""

    label: str
    dep_ids: tuple[str, ...]


FILES: tuple[DemoFile, ...] = (
    DemoFile("sdxl-base", "models/checkpoints/demo-sdxl-base.safetensors", 192, "static"),
    DemoFile("sdxl-vae", "models/vae/demo-sdxl-vae.safetensors", 48, "static", REDIRECT_ROUTE),
    DemoFile("lora-photo", "models/loras/demo-photo.safetensors", 40, "dynamic"),
    DemoFile("lora-anime", "models/loras/demo-anime.safetensors", 24, "dynamic", PRIVATE_ROUTE),
    DemoFile("lora-ink", "models/loras/demo-ink.safetensors", 12, "dynamic"),
    DemoFile("embed-neg", "models/embeddings/demo-negative.pt", 3, "dynamic"),
    DemoFile("upscale-4x", "models/upscale_models/demo-4x.pth", 64, "dynamic", REDIRECT_ROUTE),
    DemoFile("cnet-depth", "models/controlnet/demo-depth.safetensors", 96, "dynamic"),
)

JOBS: tuple[DemoJob, ...] = (
    DemoJob("portrait", ("sdxl-base", "sdxl-vae", "lora-photo", "embed-neg")),
    DemoJob("anime", ("sdxl-base", "sdxl-vae", "lora-anime", "embed-neg")),
    DemoJob("upscale", ("sdxl-base", "lora-photo", "upscale-4x")),
    DemoJob("depth", ("sdxl-base", "cnet-depth", "embed-neg")),
    DemoJob("ink", ("sdxl-base", "lora-ink", "lora-anime")),
    DemoJob("portrait-hd", ("sdxl-base", "sdxl-vae", "lora-photo", "upscale-4x")),
)


@dataclass(frozen=True)
class BuiltFile:
    """A demo file at a given scale, with its URL and digest."""

    spec: DemoFile
    size: int
    sha256: str
    url: str


def build_files(
    origin_url: str, scale: float = 1.0, files: Sequence[DemoFile] = FILES
) -> list[BuiltFile]:
    """Size, hash (in parallel; hashlib releases the GIL) and address every file."""

    def build(spec: DemoFile) -> BuiltFile:
        size = spec.size_bytes(scale)
        name = spec.dest_relative_path.rsplit("/", 1)[-1]
        url = origin_url.rstrip("/") + file_path(spec.route, spec.seed, size, name)
        return BuiltFile(spec, size, content_sha256(spec.seed, size), url)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(build, files))


def fleet_document(
    files: Sequence[BuiltFile],
    *,
    instance_ids: Sequence[str] = INSTANCE_IDS,
    max_dynamic_bytes: int = MAX_DYNAMIC_BYTES,
    prefetch_on_boot: bool = True,
) -> dict[str, Any]:
    """The fleet file (same shape as `depman apply -f`): deps, profiles, serverTypes, instances."""
    deps = {
        f.spec.dep_id: {
            "url": f.url,
            "auth": f.spec.auth,
            "destRelativePath": f.spec.dest_relative_path,
            "sha256": f.sha256,
            "expectedSizeBytes": f.size,
            "kind": f.spec.kind,
        }
        for f in files
    }
    return {
        "version": 1,
        "deps": deps,
        "profiles": {
            PROFILE_ID: {
                "staticDepIds": [f.spec.dep_id for f in files if f.spec.kind == "static"],
                "prefetchOnBoot": prefetch_on_boot,
                "dynamicPolicy": {
                    "enabled": True,
                    "minFreeBytes": MIN_FREE_BYTES,
                    "maxDynamicBytes": max_dynamic_bytes,
                    "evictionBatchMax": EVICTION_BATCH_MAX,
                    "pinTtlSeconds": PIN_TTL_SECONDS,
                },
            }
        },
        "serverTypes": {
            SERVER_TYPE: {
                "modelManagement": {"mode": "dependency_manager_v1", "profileId": PROFILE_ID},
                "maxActiveJobs": 1,
            }
        },
        "instances": {
            instance_id: {"ip": "127.0.0.1", "serverType": SERVER_TYPE}
            for instance_id in instance_ids
        },
    }


def fleet_yaml(fleet: Mapping[str, Any]) -> str:
    """The fleet as a YAML file a person can read (and `depman apply -f`)."""
    header = "# The depman demo fleet, generated by `depman demo`.\n"
    return header + yaml.safe_dump(dict(fleet), sort_keys=False, width=120)
