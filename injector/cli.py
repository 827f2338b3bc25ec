"""`meshward kube-inject -f app.yaml [-o out.yaml]`: the webhook's injection, offline (as
`istioctl kube-inject`). Settings: `--set key=value` (the keys of `InjectorConfig`, as `meshward
manifest generate` takes them) or `--injector-config FILE` (the injector ConfigMap's `config`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from injector.config import load_injector_config
from injector.workloads import inject_text
from meshward_common.errors import ConfigError, MeshwardError


def parse_sets(pairs: tuple[str, ...], prefix: str = "") -> dict[str, str]:
    """`--set key=value` pairs; with `prefix`, only keys under it (prefix stripped)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        if prefix:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix) :]
        out[key.replace("-", "_")] = value
    return out


@click.command("kube-inject")
@click.option("-f", "--filename", required=True, help="Kubernetes YAML to inject; - for stdin.")
@click.option("-o", "--output", default="-", show_default=True, help="Where to write; - stdout.")
@click.option("--set", "sets", multiple=True, help="Injector setting key=value (e.g. image=...).")
@click.option(
    "--injector-config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Injector settings YAML (the meshward-sidecar-injector ConfigMap's `config`).",
)
def kube_inject(
    filename: str, output: str, sets: tuple[str, ...], injector_config: Path | None
) -> None:
    """Add the sidecar to every Pod template in FILE (Pods, Deployments, StatefulSets,
    DaemonSets, Jobs, CronJobs, multi-document), as the injection webhook would."""
    try:
        config = load_injector_config(injector_config, parse_sets(sets))
        if filename == "-":
            text, source = sys.stdin.read(), "<stdin>"
        else:
            try:
                text, source = Path(filename).read_text(encoding="utf-8"), filename
            except OSError as exc:
                raise ConfigError(f"{filename}: {exc.strerror}") from exc
        result = inject_text(text, config, source)
    except MeshwardError as exc:
        raise click.ClickException(str(exc)) from exc
    for warning in result.warnings:
        click.echo(warning, err=True)
    if output == "-":
        click.echo(result.text, nl=False)
    else:
        Path(output).write_text(result.text, encoding="utf-8")
