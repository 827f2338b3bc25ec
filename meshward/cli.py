"""`meshward`: one entry point, one subcommand group per component.

Each component owns its group in its own `cli` module; this file only assembles them, so adding a
component never means editing another's commands.
"""

from __future__ import annotations

import importlib

import click

# (module, attribute) of each component's click group, in help order.
GROUPS: tuple[tuple[str, str], ...] = (
    ("ca.cli", "ca"),
    ("node_agent.cli", "agent"),
    ("sidecar_tls.cli", "sidecar"),
    ("policy.cli", "authz"),
    ("meshward.traces", "traces"),
    ("meshward.mesh_cli", "up"),
    ("meshward.mesh_cli", "down"),
    ("meshward.mesh_cli", "status"),
    ("meshward.mesh_cli", "logs"),
    ("meshward.mesh_cli", "exec_"),
    ("meshward.mesh_cli", "proxy_config"),
    ("meshward.mesh_cli", "check"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="meshward")
def main() -> None:
    """meshward: a service-mesh security plane (SPIFFE identities, mTLS sidecars, Istio policy)."""


def _register() -> None:
    for module_name, attr in GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # component not built yet
            raise
        main.add_command(getattr(module, attr))


_register()
