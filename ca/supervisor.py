"""`meshward ca serve`: one supervisor process and N worker processes, on every core.

The supervisor loads the sources of truth and publishes them (`ca.publisher`); opens the TLS
port's listening socket, which every worker inherits, so the kernel hands each new connection to
whichever worker accepts it first (a busy worker accepts later, an idle one takes the connection);
reserves the mTLS port, which every worker's grpcio joins with SO_REUSEPORT; serves /metrics for
all its processes (prometheus_client's multiprocess mode); starts the workers and restarts any that
dies. It announces `meshward ca: serving on HOST:PORT` once every worker accepts connections.

Workers run in their own session: a terminal's Ctrl-C reaches the supervisor only, which stops
them in order. A worker whose supervisor is gone sees its stdin close and stops too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ca.authority import ensure_state_dir
from ca.bundle_endpoint import BundleEndpoint, start_bundle_endpoint
from ca.config import CaConfig
from ca.config_watch import ConfigSource
from ca.native_port import native_module
from ca.publisher import Publisher
from ca.rate_limit import clear_rate_limits
from ca.store import CaStore
from ca.webhook import ControlPlaneWebhook
from meshward_common.clock import Clock, utc_now
from meshward_common.errors import ConfigError
from meshward_common.front_door import listening_socket
from meshward_common.svid import fingerprint_sha256

log = logging.getLogger(__name__)

READY_SECONDS = 60.0
STOP_SECONDS = 10.0
RESTART_BACKOFF = (1.0, 30.0)
METRICS_DIR = "metrics"


@dataclass(frozen=True)
class WorkerArgs:
    """What a worker process is started with (pickled onto its stdin by its own supervisor)."""

    config: CaConfig
    listen_fd: int
    mtls_fd: int | None
    log_level: str
    index: int


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0


class Supervisor:
    def __init__(
        self,
        config: CaConfig,
        log_level: str,
        clock: Clock = utc_now,
        source: ConfigSource | None = None,
    ) -> None:
        self.config = config
        self.source = source  # the config file, followed for what can change live
        self.log_level = log_level
        self.clock = clock
        self.store: CaStore | None = None
        self.workers = [_Worker(i) for i in range(config.workers)]
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._sockets: list[socket.socket] = []
        self.port = 0
        self.mtls_port: int | None = None
        self.webhook: ControlPlaneWebhook | None = None
        self.bundle_endpoint: BundleEndpoint | None = None

    async def start(self) -> None:
        cfg = self.config
        ensure_state_dir(cfg.state_dir)
        self.store = store = CaStore(cfg.state_dir)
        clear_rate_limits(cfg.state_dir)
        self.publisher = Publisher(cfg, store, self.clock, self.source)
        await self.publisher.start()
        await self._start_webhook()
        self.bundle_endpoint = await start_bundle_endpoint(cfg, self.publisher, self.clock)
        self._metrics_env = self._prepare_metrics()
        listen = listening_socket(cfg.host, cfg.port)
        self._sockets.append(listen)
        self.port = int(listen.getsockname()[1])
        self._mtls_fd: int | None = None
        if cfg.mtls_listen is not None:
            native_module()  # one line now, not a worker that dies at start
            mtls = listening_socket(*cfg.mtls_listen, what="mtls-listen")
            self._sockets.append(mtls)
            self.mtls_port = int(mtls.getsockname()[1])
            self._mtls_fd = mtls.fileno()
        self._listen_fd = listen.fileno()
        await asyncio.gather(*(self._spawn(w) for w in self.workers))
        self._tasks = [
            asyncio.create_task(self.publisher.run()),
            *(asyncio.create_task(self._keep(w)) for w in self.workers),
        ]

    async def _start_webhook(self) -> None:
        """The sidecar injection webhook, in this process only (it signs its own certificate)."""
        cfg = self.config
        if cfg.webhook_listen is None:
            return
        from injector.config import InjectorConfig, load_injector_config

        injector = (
            load_injector_config(cfg.injector_config, {})
            if cfg.injector_config is not None
            else InjectorConfig()
        )
        assert self.publisher.authority is not None
        self.webhook = ControlPlaneWebhook(
            self.publisher.authority, cfg.trust_domain, injector, *cfg.webhook_listen, self.clock
        )
        await self.webhook.start()
        self.publisher.on_authority(self.webhook.use)

    def _prepare_metrics(self) -> dict[str, str]:
        """Workers write their metrics to files here; the supervisor serves their sum."""
        if self.config.metrics_listen is None:
            return {}
        from prometheus_client import CollectorRegistry

        from ca.metrics import (
            AuthorityCollector,
            FederationCollector,
            KubernetesCollector,
            start_multiprocess_metrics_server,
        )

        path = self.config.state_dir / METRICS_DIR
        shutil.rmtree(path, ignore_errors=True)  # the counts of an earlier run
        path.mkdir(mode=0o700)
        registry = CollectorRegistry()
        registry.register(AuthorityCollector(self._authority_state))
        registry.register(FederationCollector(self.publisher.federation.status, self._config_state))
        kube = self.publisher.kube
        if kube is not None:
            registry.register(KubernetesCollector(lambda: list(kube.refused)))
        address = start_multiprocess_metrics_server(*self.config.metrics_listen, path, registry)
        log.info("metrics on http://%s:%d/metrics", *address)
        return {"PROMETHEUS_MULTIPROC_DIR": str(path)}

    def _config_state(self) -> tuple[bool, int]:
        watch = self.publisher.config_watch
        return (bool(watch.error), len(watch.restart_pending)) if watch is not None else (False, 0)

    def _authority_state(self) -> tuple[str, list[tuple[str, float]]]:
        authority = self.publisher.authority
        roots = authority.roots if authority is not None else ()
        return self.publisher.phase, [
            (fingerprint_sha256(r), r.not_valid_after_utc.timestamp()) for r in roots
        ]

    async def _spawn(self, worker: _Worker) -> None:
        args = WorkerArgs(self.config, self._listen_fd, self._mtls_fd, self.log_level, worker.index)
        fds = (self._listen_fd,) if self._mtls_fd is None else (self._listen_fd, self._mtls_fd)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ca.worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            pass_fds=fds, start_new_session=True,
            env={**os.environ, **self._metrics_env},
        )  # fmt: skip
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(pickle.dumps(args))
        await proc.stdin.drain()  # stdin stays open: its EOF tells the worker we are gone
        worker.proc = proc
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_SECONDS)
        except TimeoutError:
            line = b""
        if not line.startswith(b"ready"):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = await proc.wait()
            raise ConfigError(
                f"CA worker {worker.index} stopped before serving (exit {code}); its log is above"
            )

    async def _keep(self, worker: _Worker) -> None:
        """Restart a worker that died (after a growing pause, so a crash loop cannot spin)."""
        delay = RESTART_BACKOFF[0]
        while True:
            assert worker.proc is not None
            started = time.monotonic()
            code = await worker.proc.wait()
            if self._stopping:
                return
            if time.monotonic() - started > RESTART_BACKOFF[1]:
                delay = RESTART_BACKOFF[0]
            log.error("CA worker %d exited (%s); restarting in %.0fs", worker.index, code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_BACKOFF[1])
            try:
                await self._spawn(worker)
                worker.restarts += 1
            except ConfigError as exc:
                log.error("%s", exc)

    async def stop(self) -> None:
        self._stopping = True
        if self.webhook is not None:
            await self.webhook.stop()
        if self.bundle_endpoint is not None:
            await self.bundle_endpoint.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        procs = [w.proc for w in self.workers if w.proc is not None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), STOP_SECONDS)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for sock in self._sockets:
            sock.close()
        if self.store is not None:
            self.store.close()


async def serve(
    config: CaConfig,
    announce: Callable[[str], None],
    log_level: str,
    source: ConfigSource | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, announcing `meshward ca: serving on HOST:PORT` when ready."""
    supervisor = Supervisor(config, log_level, source=source)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await supervisor.start()
        host = f"[{config.host}]" if ":" in config.host else config.host
        line = f"meshward ca: serving on {host}:{supervisor.port}"
        if config.mtls_listen is not None:
            mtls_host = config.mtls_listen[0]
            mtls_host = f"[{mtls_host}]" if ":" in mtls_host else mtls_host
            line += f", mTLS on {mtls_host}:{supervisor.mtls_port}"
        if supervisor.webhook is not None:
            line += f", webhook on https://{supervisor.webhook.server.host}:{supervisor.webhook.port}/inject"
        if supervisor.bundle_endpoint is not None:
            endpoint = supervisor.bundle_endpoint
            line += f", bundle endpoint on https://{_bracketed(endpoint.host)}:{endpoint.port}/"
        announce(f"{line} ({config.workers} workers)")
        await stop.wait()
    finally:
        await supervisor.stop()


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
