"""SPIRE's server as the CA benchmark's reference row: built by scripts/build_spire.sh into
tools/bin/spire-server (SPIRE v1.13.3 from the Go module proxy), run here with an in-memory key
manager and a SQLite datastore, and driven over its local admin socket (`MintX509SVID`, which
SPIRE authorizes for any caller on that socket, as its CLI's `spire-server x509 mint` does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRUST_DOMAIN = "cluster.local"

_CONFIG = """\
server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{socket}"
    trust_domain = "{trust_domain}"
    data_dir = "{data}"
    log_level = "WARN"
    ca_key_type = "ec-p256"
    default_x509_svid_ttl = "1h"
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
}}
"""


def spire_server() -> str | None:
    """$MESHWARD_SPIRE_SERVER, else tools/bin/spire-server (built when Go is installed)."""
    given = os.environ.get("MESHWARD_SPIRE_SERVER")
    if given:
        return given
    if shutil.which("go"):
        subprocess.run([str(REPO / "scripts" / "build_spire.sh")], check=False)  # no-op when built
    built = REPO / "tools" / "bin" / "spire-server"
    return str(built) if built.exists() else None


class SpireServer:
    """`spire-server run` in `workdir`; `socket` is the admin API's Unix socket."""

    def __init__(self, binary: str, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.socket = workdir / "api.sock"
        data = workdir / "data"
        data.mkdir(parents=True)
        config = workdir / "server.conf"
        config.write_text(
            _CONFIG.format(port=port, socket=self.socket, trust_domain=TRUST_DOMAIN, data=data)
        )
        self.log_path = workdir / "spire.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, "run", "-config", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_healthy(binary)

    def _wait_healthy(self, binary: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"spire-server exited: {self.log_path.read_text()}")
            check = subprocess.run(
                [binary, "healthcheck", "-socketPath", str(self.socket), "-shallow"],
                capture_output=True,
                check=False,
            )
            if check.returncode == 0:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"spire-server not healthy after 60 s: {self.log_path.read_text()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
