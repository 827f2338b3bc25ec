"""The audit log: one JSON line per issuance and per refusal. Never a key, never a CSR."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
# Made once: json.dumps with separators builds an encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True)
class AuditRecord:
    time: str
    caller: str  # "node/<name> (mtls|join-token)", or what is known of an unauthenticated peer
    identity: str  # the identity issued or asked for ("" if none)
    serial: str  # hex serial of the issued certificate ("" on refusal)
    not_after: str  # RFC 3339 ("" on refusal)
    outcome: str  # "issued" | "refused"
    reason: str  # "" when issued; the refusal's message and gRPC code otherwise

    def to_json(self) -> str:
        # Field by field (not dataclasses.asdict, which deep-copies): this runs per request.
        return _ENCODER.encode(
            {
                "time": self.time,
                "caller": self.caller,
                "identity": self.identity,
                "serial": self.serial,
                "not_after": self.not_after,
                "outcome": self.outcome,
                "reason": self.reason,
            }
        )


def issued(
    now: dt.datetime, caller: str, identity: str, serial: int, not_after: dt.datetime
) -> AuditRecord:
    return AuditRecord(
        now.isoformat(), caller, identity, format(serial, "x"), not_after.isoformat(), "issued", ""
    )


def refused(now: dt.datetime, caller: str, identity: str, reason: str) -> AuditRecord:
    return AuditRecord(now.isoformat(), caller, identity, "", "", "refused", reason)


class AuditLog:
    """Appends records to a file opened once (O_APPEND: one write per line, lines never interleave)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()

    def write(self, record: AuditRecord) -> None:
        line = (record.to_json() + "\n").encode()
        try:
            with self._lock:
                os.write(self._fd, line)
        except OSError as exc:  # the audit trail failing must be loud but must not stop issuance
            log.error("cannot write audit log %s: %s", self.path, exc.strerror)

    def close(self) -> None:
        os.close(self._fd)
