"""`meshward`: one entry point, one subcommand group per component.

Each component owns its group in its own `cli` module; this file only assembles them, so adding a
component never means editing another's commands. A component's module is imported only when its
command runs (or help lists it): `meshward sidecar run` must not load the CA's or the agent's
dependencies (grpc alone is ~20 MB of the sidecar's RSS).
"""

from __future__ import annotations

import importlib

import click

# (command name, module, attribute) of each component's click command, in help order.
GROUPS: tuple[tuple[str, str, str], ...] = (
    ("ca", "ca.cli", "ca"),
    ("agent", "node_agent.cli", "agent"),
    ("sidecar", "sidecar_tls.cli", "sidecar"),
    ("authz", "policy.cli", "authz"),
    ("kube-inject", "injector.cli", "kube_inject"),
    ("manifest", "meshward.install.cli", "manifest"),
    ("node", "meshward.kube.cli", "node"),
    ("kube", "meshward.kube.cli", "kube"),
    ("traces", "meshward.traces", "traces"),
    ("up", "meshward.mesh_cli", "up"),
    ("down", "meshward.mesh_cli", "down"),
    ("status", "meshward.mesh_cli", "status"),
    ("logs", "meshward.mesh_cli", "logs"),
    ("exec", "meshward.mesh_cli", "exec_"),
    ("proxy-config", "meshward.mesh_cli", "proxy_config"),
    ("check", "meshward.mesh_cli", "check"),
)


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, _, _ in GROUPS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for name, module, attr in GROUPS:
            if name == cmd_name:
                command = getattr(importlib.import_module(module), attr)
                assert isinstance(command, click.Command)
                return command
        return None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="meshward")
def main() -> None:
    """meshward: a service-mesh security plane (SPIFFE identities, mTLS sidecars, Istio policy)."""
