"""The reflector's resume/relist rules, around a scripted API (the real one is in
tests/ca/test_kube_control_plane.py, including an API server restart)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ca.kube.api import PODS, Gone, KubeApiError
from ca.kube.watch import Reflector, backoff


def pod(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": rv}}


class ScriptedApi:
    """Each watch() call plays the next script: events, then an exception or a clean end."""

    def __init__(self, lists: list[tuple[dict[str, Any], str]], watches: list[Any]) -> None:
        self.lists = lists
        self.watches = watches
        self.watched_from: list[str] = []
        self.done = asyncio.Event()

    async def list_all(self, resource: Any) -> tuple[dict[str, Any], str]:
        return self.lists.pop(0)

    async def watch(self, resource: Any, version: str) -> Any:
        self.watched_from.append(version)
        if not self.watches:
            self.done.set()
            await asyncio.Event().wait()
        events, end = self.watches.pop(0)
        for event in events:
            yield event
        if end is not None:
            raise end


async def run_until_done(api: ScriptedApi) -> Reflector:
    changes: list[int] = []
    r = Reflector(api, PODS, lambda: changes.append(1))  # type: ignore[arg-type]
    task = asyncio.create_task(r.run())
    await asyncio.wait_for(api.done.wait(), 10)
    task.cancel()
    return r


async def test_resumes_from_the_last_version_after_a_break() -> None:
    api = ScriptedApi(
        [({"ns/a": pod("a", "5")}, "5")],
        [
            ([("ADDED", pod("b", "6"))], KubeApiError(0, "connection reset")),
            ([("BOOKMARK", {"metadata": {"resourceVersion": "9"}})], None),
            ([("DELETED", pod("a", "10"))], None),
        ],
    )
    r = await run_until_done(api)
    assert api.watched_from == ["5", "6", "9", "10"]  # no second list
    assert sorted(r.objects) == ["ns/b"]
    assert (r.resumes, r.relists) == (1, 0)


async def test_relists_on_410_gone_and_replaces_everything() -> None:
    api = ScriptedApi(
        [({"ns/a": pod("a", "5")}, "5"), ({"ns/c": pod("c", "50")}, "50")],
        [([("ADDED", pod("b", "6"))], Gone(410, "too old resource version"))],
    )
    r = await run_until_done(api)
    assert api.watched_from == ["5", "50"]
    assert sorted(r.objects) == ["ns/c"]  # a and b were lost with the old version
    assert r.relists == 1


@pytest.mark.parametrize("attempt", [0, 3, 30])
def test_backoff_is_bounded(attempt: int) -> None:
    assert 0 < backoff(attempt, 0.0) <= backoff(attempt, 0.999) <= 5.0
