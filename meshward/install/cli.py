"""`meshward manifest generate [--set key=value ...]` (as `istioctl manifest generate`)."""

from __future__ import annotations

import click

from meshward_common.errors import MeshwardError


@click.group("manifest")
def manifest() -> None:
    """Install manifests for Kubernetes."""


@manifest.command("generate")
@click.option("--set", "sets", multiple=True, help="key=value (image, trustDomain, cacerts, ...).")
def generate(sets: tuple[str, ...]) -> None:
    """Print every object a cluster needs (apply with `kubectl apply --server-side -f -`).

    Keys: image=REPO:TAG, trustDomain=TD, cacerts=DIR (Istio's plug-in CA files: the cacerts
    Secret, the webhook's caBundle and the agents' root), socketDir=PATH, tokenAudience=AUD,
    caAddress=HOST:PORT, injectionURL=https://HOST:PORT/inject (a control plane outside the
    cluster, as Istio's external control plane), injector.<setting>=V
    (image_pull_policy, failure_policy=Fail|Ignore, rewrite_app_probes, otlp_endpoint,
    trace_sampling, revision). Federation: bundleEndpoint.port=8443 (the SPIFFE bundle endpoint
    and its Service meshward-bundle-endpoint; off by default), bundleEndpoint.serviceType=
    ClusterIP|NodePort|LoadBalancer, bundleEndpoint.refreshHint=5m, federatesWith=FILE (a
    `federates-with:` block, shipped as the CA's config file in the ConfigMap meshward-ca-config)."""
    from meshward.install.manifests import generate as objects
    from meshward.install.manifests import render
    from meshward.install.values import parse_values

    try:
        values = parse_values(sets)
        text = render(objects(values))
    except MeshwardError as exc:
        raise click.ClickException(str(exc)) from exc
    if values.cacerts is None:
        click.echo(
            "meshward manifest generate: no --set cacerts=DIR: the control plane makes its own "
            "root, so the MutatingWebhookConfiguration has no caBundle and the node agents wait "
            "for the ConfigMap istio-system/istio-ca-root-cert (root-cert.pem) until you add "
            "that root",
            err=True,
        )
    click.echo(text, nl=False)
