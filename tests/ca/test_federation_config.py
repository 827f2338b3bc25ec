"""Federation as configured and decided: relationships validated at start in one line each, the
bundle endpoint's sequence numbers, and which fetched bundle replaces the one held."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from ca.authority import make_root
from ca.bundle_endpoint import next_sequence
from ca.config import build_config
from ca.federation import refresh_interval, retry_interval, take_fetched
from meshward_common.errors import ConfigError, SvidError
from meshward_common.spiffe_bundle import SpiffeBundle

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
B = "b.example"


def _config(tmp_path: Path, entry: dict[str, Any], td: str = B) -> Any:
    bundle = tmp_path / "b.json"
    bundle.write_text("{}")
    base = {
        "bundle-endpoint-url": "https://127.0.0.1:8443/",
        "endpoint-spiffe-id": f"spiffe://{B}/meshward/control-plane",
        "trust-bundle": str(bundle),
    }
    return build_config(
        {
            "trust-domain": "a.example",
            "state-dir": str(tmp_path),
            "federates-with": {td: {**base, **entry}},
        }
    )


def test_a_relationship_names_its_endpoint_and_initial_bundle(tmp_path: Path) -> None:
    (rel,) = _config(tmp_path, {}).federates_with
    assert (rel.trust_domain, rel.host, rel.port, rel.self_serving) == (B, "127.0.0.1", 8443, True)
    assert str(rel.endpoint_id) == f"spiffe://{B}/meshward/control-plane"


@pytest.mark.parametrize(
    ("entry", "td", "reason"),
    [
        ({"bundle-endpoint-url": "http://b:8443/"}, B, "must be https"),
        ({"bundle-endpoint-url": "https://user@b:8443/"}, B, "must not carry userinfo"),
        ({"bundle-endpoint-url": ""}, B, "bundle-endpoint-url: required"),
        ({"bundle-endpoint-profile": "https_web"}, B, "https_web is not supported"),
        ({"bundle-endpoint-profile": "grpc"}, B, "is not https_spiffe"),
        ({"endpoint-spiffe-id": "b.example/x"}, B, "endpoint-spiffe-id"),
        ({"endpoint-spiffe-id": "spiffe://c.example/x"}, B, "neither ours nor one we federate"),
        ({"trust-bundle": None}, B, "trust-bundle: required: the endpoint is self-serving"),
        ({"trust-bundle": "/nonexistent"}, B, "is not a file"),
        ({"surprise": 1}, B, "unknown key"),
        ({}, "a.example", "own trust domain"),
        ({}, "B.example", "trust domain"),
    ],
)
def test_a_bad_relationship_is_one_line_naming_the_key(
    tmp_path: Path, entry: dict[str, Any], td: str, reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        _config(tmp_path, entry, td)
    assert str(info.value).startswith(f"federates-with.{td}")


def test_an_endpoint_in_our_own_trust_domain_needs_no_initial_bundle(tmp_path: Path) -> None:
    entry = {"endpoint-spiffe-id": "spiffe://a.example/bundle-server", "trust-bundle": None}
    (rel,) = _config(tmp_path, entry).federates_with
    assert not rel.self_serving
    assert rel.trust_bundle is None


def test_the_sequence_starts_at_one_and_moves_only_with_the_roots() -> None:
    assert next_sequence(None, "d1") == 1
    assert next_sequence(("d1", 4), "d1") == 4
    assert next_sequence(("d1", 4), "d2") == 5


def _bundle(roots: tuple[Any, ...], seq: int | None, hint: int | None = 300) -> SpiffeBundle:
    return SpiffeBundle(B, roots, seq, hint)


def test_a_fetched_bundle_replaces_the_held_one_unless_it_is_the_same_or_older() -> None:
    old, new = make_root(B, NOW)[0], make_root(B, NOW)[0]
    held = _bundle((old,), 3)
    assert take_fetched(held, _bundle((old,), 3)) is None
    assert take_fetched(held, _bundle((old, new), 4)) == _bundle((old, new), 4)
    assert take_fetched(held, _bundle((old,), 3, 60)) == _bundle((old,), 3, 60)
    assert take_fetched(held, _bundle((old,), 2)) is None  # same keys, older number: nothing new
    with pytest.raises(SvidError, match="sequence 2 is older than the 3 already held"):
        take_fetched(held, _bundle((new,), 2))
    assert take_fetched(_bundle((old,), None), _bundle((new,), None)) == _bundle((new,), None)


def test_refreshes_come_four_times_per_hint_and_never_in_a_tight_loop() -> None:
    assert refresh_interval(_bundle((), 1, 300)) == 75
    assert refresh_interval(_bundle((), 1, None)) == 75  # five minutes when the bundle sets none
    assert refresh_interval(_bundle((), 1, 2)) == 1.0


def test_after_failures_the_next_attempt_backs_off_from_5_s_up_to_the_usual_interval() -> None:
    bundle = _bundle((), 1, 300)  # usual interval 75 s
    waits = [retry_interval(bundle, n) for n in range(6)]
    assert waits == [75, 5, 10, 20, 40, 75]
    assert retry_interval(bundle, 10_000) == 75
    assert retry_interval(_bundle((), 1, 2), 1) == 1.0  # never longer than the usual interval
