"""Fixtures shared by the sidecar tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

# CPython 3.11.7 can fail to compile hypothesis (imported lazily by its pytest plugin at the end
# of the session, deep in the stack: "AST constructor recursion depth mismatch"). Importing it
# here, at a shallow depth, avoids that.
import hypothesis  # noqa: F401
import pytest

from tests.sidecar_tls import grpc_apps


@pytest.fixture
async def grpc_app() -> AsyncIterator[int]:
    """A real grpcio server (tests/sidecar_tls/grpc_apps.py) on loopback; its port."""
    server, port = await grpc_apps.start_server()
    try:
        yield port
    finally:
        await server.stop(None)
