"""Root rotation with no outage, as a pure schedule: `now` is passed in.

`meshward ca rotate-root` (self-signed mode) makes a new root, or a new set of Istio plug-in files
appears (plug-in mode); either records a `RootRotation`, and from then on:
1. prepared  (started .. switch_at): the new root is in the trust bundle beside the old one, so
   every agent and sidecar learns it; the CA still signs with the old key.
2. switched  (switch_at .. retire_at): the CA signs with the new key; the old root stays in the
   bundle, because certificates it signed are still valid.
3. done      (retire_at ..): the last certificate the old key signed has expired (it was signed
   before switch_at, for at most max-ttl): the old root leaves the bundle.
The grace period (prepared) must outlast the time the bundle takes to reach everyone: the
discovery stream and the Workload API carry it within seconds; the default is an hour.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Literal

from cryptography import x509

from ca.issuer import SigningAuthority
from ca.published import PublishedAuthority, decode_authority, encode_authority
from meshward_common.errors import ConfigError

Phase = Literal["prepared", "switched", "done"]
DEFAULT_GRACE = dt.timedelta(hours=1)
# Workers see a new signer within a poll of the publisher and one of their own (well under a
# second); a worker may sign with the old key until then.
SWITCH_PROPAGATION = dt.timedelta(seconds=5)
ROTATION = "root_rotation"  # its row in ca.store's published table


@dataclass(frozen=True)
class RootRotation:
    """From one signing authority to another whose roots differ (a new self-signed root, or a new
    set of Istio plug-in files)."""

    old: SigningAuthority
    new: SigningAuthority
    started: dt.datetime
    grace: dt.timedelta

    @property
    def switch_at(self) -> dt.datetime:
        return self.started + self.grace

    def retire_at(self, max_ttl: dt.timedelta) -> dt.datetime:
        # Signed before the workers saw the switch, for at most max_ttl: all expired by then.
        return self.switch_at + SWITCH_PROPAGATION + max_ttl

    def phase(self, now: dt.datetime, max_ttl: dt.timedelta) -> Phase:
        if now < self.switch_at:
            return "prepared"
        if now < self.retire_at(max_ttl):
            return "switched"
        return "done"

    def both_roots(self) -> tuple[x509.Certificate, ...]:
        return (*self.old.roots, *(r for r in self.new.roots if r not in self.old.roots))

    def authority(self, now: dt.datetime, max_ttl: dt.timedelta) -> SigningAuthority:
        """Who signs and which roots are in the bundle at `now`."""
        phase = self.phase(now, max_ttl)
        if phase == "prepared":
            old = self.old
            return SigningAuthority(old.cert, old.key, old.parents, self.both_roots())
        if phase == "switched":
            new = self.new
            return SigningAuthority(new.cert, new.key, new.parents, self.both_roots())
        return self.new

    def earlier_chains(
        self, now: dt.datetime, max_ttl: dt.timedelta
    ) -> tuple[tuple[x509.Certificate, ...], ...]:
        """Signing chains whose certificates may still be presented (the old one's, until done)."""
        return (self.old.served_chain,) if self.phase(now, max_ttl) != "done" else ()


def encode_rotation(rotation: RootRotation) -> bytes:
    return json.dumps(
        {
            "old": json.loads(encode_authority(PublishedAuthority(rotation.old))),
            "new": json.loads(encode_authority(PublishedAuthority(rotation.new))),
            "started": rotation.started.isoformat(),
            "grace_seconds": rotation.grace.total_seconds(),
        },
        sort_keys=True,
    ).encode()


def decode_rotation(data: bytes) -> RootRotation:
    try:
        doc = json.loads(data)
        return RootRotation(
            decode_authority(json.dumps(doc["old"]).encode()).signer,
            decode_authority(json.dumps(doc["new"]).encode()).signer,
            dt.datetime.fromisoformat(doc["started"]),
            dt.timedelta(seconds=float(doc["grace_seconds"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the recorded root rotation is unreadable: {exc}") from exc
