"""One resource kept in memory from the API server: list, then watch from the list's version.

Like client-go's reflector: a watch that ends or breaks (network, API server restart) resumes from
the last resourceVersion seen (events or bookmarks), so nothing is missed and nothing is listed
again; a 410 Gone (the version was compacted away) lists afresh and replaces everything. While the
API server is away the last known objects stay in force: the mesh keeps serving its last state.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from ca.kube.api import Gone, KubeApi, KubeApiError, Resource, object_key

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.2
BACKOFF_CAP = 5.0


def backoff(attempt: int, rand: float) -> float:
    """Full-jitter exponential backoff in seconds (`rand` in [0, 1))."""
    return float(min(BACKOFF_CAP, BACKOFF_BASE * 2.0**attempt) * (0.5 + rand / 2))


class Reflector:
    """`objects` holds the resource by "namespace/name"; `on_change` runs after each change."""

    def __init__(self, api: KubeApi, resource: Resource, on_change: Callable[[], None]) -> None:
        self.api = api
        self.resource = resource
        self.on_change = on_change
        self.objects: dict[str, dict[str, Any]] = {}
        self.version = ""
        self.synced = asyncio.Event()
        self.relists = 0  # lists after the first (410 Gone), for tests and logs
        self.resumes = 0  # watches resumed from a version after a break

    def apply(self, kind: str, obj: dict[str, Any]) -> bool:
        """One watch event; True if the objects changed."""
        meta = obj.get("metadata") or {}
        version = str(meta.get("resourceVersion", ""))
        if version:
            self.version = version
        if kind == "BOOKMARK":
            return False
        key = object_key(obj)
        if kind == "DELETED":
            return self.objects.pop(key, None) is not None
        if kind in ("ADDED", "MODIFIED"):
            self.objects[key] = obj
            return True
        log.warning("%s watch: unknown event type %r ignored", self.resource, kind)
        return False

    async def _relist(self) -> None:
        self.objects, self.version = await self.api.list_all(self.resource)
        if self.synced.is_set():
            self.relists += 1
        self.synced.set()
        self.on_change()

    async def run(self) -> None:
        attempt = 0
        broken = False
        while True:
            try:
                if not self.version:
                    await self._relist()
                elif broken:
                    self.resumes += 1
                    log.info("%s watch resuming from version %s", self.resource, self.version)
                broken = False
                async for kind, obj in self.api.watch(self.resource, self.version):
                    attempt = 0
                    if self.apply(kind, obj):
                        self.on_change()
            except Gone:
                log.info("%s: version %s expired (410 Gone): listing again", self.resource,
                         self.version)  # fmt: skip
                self.version = ""
            except KubeApiError as exc:
                broken = True
                delay = backoff(attempt, random.random())  # noqa: S311 (jitter, not crypto)
                attempt = min(attempt + 1, 10)
                log.warning("%s watch: %s (retry in %.1fs)", self.resource, exc, delay)
                await asyncio.sleep(delay)
