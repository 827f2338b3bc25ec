"""A real Jaeger v2 (all-in-one, in-memory storage) for tests, on free loopback ports.

`run_jaeger(tmp_path)` writes meshward's Jaeger config (`meshward.jaeger`), starts the binary and
waits until both the OTLP port and the query API answer. The binary is found (or built first, slow
once) by `meshward.jaeger.ensure_jaeger`, as `meshward up` and `make jaeger` find it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshward.jaeger import JaegerListen, ensure_jaeger, jaeger_argv, jaeger_config


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Jaeger:
    process: subprocess.Popen[bytes]
    otlp_port: int
    query_port: int
    log_path: Path
    otlp_host: str = "127.0.0.1"
    _stopped: bool = field(default=False, repr=False)

    @property
    def otlp_endpoint(self) -> str:
        return f"http://{self.otlp_host}:{self.otlp_port}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(self.query_url + path, timeout=5) as resp:  # noqa: S310
            return json.load(resp)

    def traces(self, service: str, limit: int = 20) -> list[dict[str, Any]]:
        data = self.api(f"/api/traces?service={service}&limit={limit}&lookback=1h")
        return list(data.get("data") or [])

    def wait_for_traces(
        self, service: str, *, min_spans: int, timeout_s: float = 20.0
    ) -> list[dict[str, Any]]:
        """Poll the query API until a trace of `service` has at least `min_spans` spans."""
        deadline = time.monotonic() + timeout_s
        traces: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            traces = self.traces(service)
            if any(len(t["spans"]) >= min_spans for t in traces):
                return traces
            time.sleep(0.2)
        raise AssertionError(f"no trace of {service} with >= {min_spans} spans in Jaeger: {traces}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _ready(j: Jaeger) -> bool:
    try:
        with socket.create_connection((j.otlp_host, j.otlp_port), timeout=0.5):
            pass
        j.api("/api/services")
    except OSError:
        return False
    return True


def run_jaeger(tmp_path: Path, *, otlp_host: str = "127.0.0.1", timeout_s: float = 60.0) -> Jaeger:
    """Start Jaeger with its query API on loopback and OTLP/HTTP on `otlp_host` (a pod network's
    bridge address lets sidecars in pods export to it)."""
    binary = ensure_jaeger()
    otlp, query_http, query_grpc = free_port(otlp_host), free_port(), free_port()
    config = tmp_path / "jaeger.yaml"
    listen = JaegerListen(
        otlp_http=f"{otlp_host}:{otlp}",
        query_http=f"127.0.0.1:{query_http}",
        query_grpc=f"127.0.0.1:{query_grpc}",
    )
    config.write_text(jaeger_config(listen, max_traces=10000, batch_timeout_ms=100))
    log_path = tmp_path / "jaeger.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            jaeger_argv(binary, str(config)), stdout=log_file, stderr=subprocess.STDOUT
        )
    j = Jaeger(proc, otlp, query_http, log_path, otlp_host)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jaeger exited with {proc.returncode}:\n{j.log()[-3000:]}")
        if _ready(j):
            return j
        time.sleep(0.2)
    j.stop()
    raise RuntimeError(f"jaeger not ready within {timeout_s}s:\n{j.log()[-3000:]}")
