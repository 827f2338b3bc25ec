"""The observer contract's fan-out: every observer sees each hop once, injected headers merge."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from sidecar_tls.telemetry.observe import BoundHop, CompositeObserver, Hop, HopSpan

BASE = Hop(direction="outbound", protocol="http", destination_service="b.default")


class _Span(HopSpan):
    def __init__(self, log: list[tuple[object, ...]], name: str, inject: list[tuple[str, str]]):
        self._log, self._name, self._inject = log, name, inject

    def inject(self) -> Sequence[tuple[str, str]]:
        return self._inject

    def finish(
        self, status: int, response_bytes: int, error: str | None = None, grpc_status: int = -1
    ) -> None:
        self._log.append((self._name, "finish", status, response_bytes, error))


class _Bound(BoundHop):
    def __init__(self, obs: _Recorder) -> None:
        self._obs = obs

    def request(
        self, method: str, path: str, authority: str, headers: Mapping[str, str]
    ) -> HopSpan:
        self._obs.log.append((self._obs.name, "request", method, path, authority, dict(headers)))
        return _Span(self._obs.log, self._obs.name, self._obs.inject)


class _Recorder:
    def __init__(self, log: list[tuple[object, ...]], name: str, inject: list[tuple[str, str]]):
        self.log, self.name, self.inject = log, name, inject

    def start(self, hop: Hop, headers: Mapping[str, str]) -> HopSpan:
        return self.bind(hop).request(hop.method, hop.path, hop.authority, headers)

    def bind(self, base: Hop) -> BoundHop:
        self.log.append((self.name, "bind", base.destination_service))
        return _Bound(self)


@pytest.mark.parametrize("count", [2, 3])
def test_composite_fans_out_once_per_observer_and_merges_injected_headers(count: int) -> None:
    log: list[tuple[object, ...]] = []
    injects = [[("x-a", "1")], [], [("x-c", "3")]][:count]
    observer = CompositeObserver([_Recorder(log, f"o{i}", inj) for i, inj in enumerate(injects)])
    bound = observer.bind(BASE)
    span = bound.request("GET", "/p", "b:80", {"h": "v"})
    assert list(span.inject()) == [h for inj in injects for h in inj]
    span.finish(200, 5)
    names = [f"o{i}" for i in range(count)]
    assert [e for e in log if e[1] == "bind"] == [(n, "bind", "b.default") for n in names]
    assert [e for e in log if e[1] == "request"] == [
        (n, "request", "GET", "/p", "b:80", {"h": "v"}) for n in names
    ]
    assert [e for e in log if e[1] == "finish"] == [(n, "finish", 200, 5, None) for n in names]


def test_only_the_second_observer_injecting_is_passed_on() -> None:
    log: list[tuple[object, ...]] = []
    observer = CompositeObserver([_Recorder(log, "m", []), _Recorder(log, "t", [("x-t", "1")])])
    assert list(observer.bind(BASE).request("GET", "/", "", {}).inject()) == [("x-t", "1")]
