"""Where the local mesh keeps its files, under one state directory.

<state>/mesh.json            the options `up` ran with (so down/status/exec need no flags)
<state>/registry.yaml        the workload registry given to the CA
<state>/policies/            AuthorizationPolicy / PeerAuthentication files (watched by the CA)
<state>/ca/                  the control plane's state (root, bundle)
<state>/agents/<node>/       each node agent's state; its Workload API socket is <node>.sock
<state>/run/<component>.json pid, start time and argv of each supervised process
<state>/logs/<component>.log everything each process writes
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from meshward.mesh.spec import MeshOptions
from meshward_common.errors import ConfigError


@dataclass(frozen=True)
class StateLayout:
    root: Path

    @property
    def options_file(self) -> Path:
        return self.root / "mesh.json"

    @property
    def registry(self) -> Path:
        return self.root / "registry.yaml"

    @property
    def policies(self) -> Path:
        return self.root / "policies"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def agent_dir(self, node: str) -> Path:
        return self.root / "agents" / node

    def agent_socket(self, node: str) -> Path:
        return self.root / "agents" / f"{node}.sock"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def make(self) -> None:
        # 0755: the sidecars (uid 1337) and the ingress must reach the agents' sockets in here.
        for d in (self.root, self.policies, self.ca_dir, self.run_dir, self.logs):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        (self.root / "agents").mkdir(exist_ok=True)
        (self.root / "agents").chmod(0o755)


def save_options(layout: StateLayout, options: MeshOptions) -> None:
    data = asdict(options)
    data["state_dir"] = str(options.state_dir)
    layout.options_file.write_text(json.dumps(data, indent=2) + "\n")


def load_options(layout: StateLayout) -> MeshOptions | None:
    """The options of the mesh in this state dir, or None when no mesh was started there."""
    try:
        data = json.loads(layout.options_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{layout.options_file}: unreadable mesh state: {exc}") from exc
    data["state_dir"] = Path(data["state_dir"])
    try:
        return MeshOptions(**data)
    except TypeError as exc:
        raise ConfigError(f"{layout.options_file}: unexpected mesh state: {exc}") from exc
