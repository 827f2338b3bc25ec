"""Suite-wide setup."""

from __future__ import annotations

import fcntl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Imported early: a late import by the pytest plugin crashed Python 3.11.7 at session end.
import hypothesis  # noqa: F401
import pytest

# The netns tests name their namespaces, links and subnets by a fixed prefix per test module, and
# clean up that prefix's leftovers before they start. Two runs at once on one machine would tear
# down each other's pods: a run that has netns tests holds this lock, and a second one waits.
NETNS_LOCK = Path("/run/lock/meshward-netns-tests.lock")


@pytest.fixture(scope="session", autouse=True)
def _one_netns_run_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    if not any(item.get_closest_marker("netns") for item in request.session.items):
        yield
        return
    NETNS_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with NETNS_LOCK.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"\nwaiting for another meshward test run ({NETNS_LOCK})", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real etcd + kube-apiserver (+ controllers) on loopback, once per session."""
    from tests.harness.kube import running_cluster

    with running_cluster(tmp_path_factory.mktemp("kube")) as cluster:
        yield cluster


@pytest.fixture
def kube(kube_cluster: Any) -> Iterator[Any]:
    """The session's cluster for one test: its namespaces and nodes are deleted afterwards."""
    from tests.harness.kube import Kube, admin_client

    api = admin_client(kube_cluster)
    k = Kube(kube_cluster, api)
    try:
        yield k
    finally:
        k.cleanup()
        api.close()
