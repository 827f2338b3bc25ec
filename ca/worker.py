"""One CA worker process (`python -m ca.worker`), started by `ca.supervisor` and by nothing else.

Its arguments arrive pickled on stdin from its own supervisor (a pipe only the two of them hold);
it serves on the listening socket it inherited, says `ready` on stdout, and stops on SIGTERM or
when its stdin closes (the supervisor is gone).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import socket
import sys

from ca.server import CaWorker
from ca.store import CaStore
from ca.supervisor import WorkerArgs
from meshward_common import logs


async def _run(args: WorkerArgs) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def stdin_readable() -> None:
        try:
            gone = not os.read(0, 4096)
        except OSError:
            gone = True
        if gone:
            loop.remove_reader(0)
            stop.set()

    loop.add_reader(0, stdin_readable)
    sock = socket.socket(fileno=args.listen_fd)
    mtls = None if args.mtls_fd is None else socket.socket(fileno=args.mtls_fd)
    store = CaStore(args.config.state_dir)
    worker = CaWorker(args.config, store, listen_sock=sock, mtls_sock=mtls)
    try:
        await worker.start()
        print(f"ready {os.getpid()}", flush=True)
        await stop.wait()
    finally:
        await worker.stop()
        store.close()


def main() -> None:
    # Our own supervisor wrote this into a pipe it created for us; nothing else can reach it.
    args = pickle.load(sys.stdin.buffer)  # noqa: S301
    if not isinstance(args, WorkerArgs):
        raise SystemExit("ca.worker: started without WorkerArgs; run `meshward ca serve`")
    logs.setup(f"ca-worker-{args.index}", args.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is pinned, but the CA works without it
        pass
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
