"""The sidecar injection webhook, served by the control plane (as istiod serves it) on one port
of the supervisor process (not of every worker: admission calls are few).

Its serving certificate is issued by this CA for the webhook Service's DNS names (and
`localhost`), with the control plane's SPIFFE ID; the API server trusts it through the
MutatingWebhookConfiguration's caBundle, which `meshward manifest generate` fills with the
plug-in CA's root. Re-issued at half-life, like the gRPC port's certificate.
"""

from __future__ import annotations

import asyncio
import logging

from ca.https_cert import HttpsServerCert
from ca.published import PublishedAuthority
from injector.config import CONTROL_PLANE_NAMESPACE, WEBHOOK_SERVICE, InjectorConfig
from injector.webhook import WebhookServer, webhook_dns_names
from meshward_common.clock import Clock

log = logging.getLogger(__name__)
DNS_NAMES = ("localhost", *webhook_dns_names(WEBHOOK_SERVICE, CONTROL_PLANE_NAMESPACE))


class ControlPlaneWebhook:
    def __init__(
        self,
        authority: PublishedAuthority,
        trust_domain: str,
        injector: InjectorConfig,
        host: str,
        port: int,
        clock: Clock,
    ) -> None:
        self.cert = HttpsServerCert(authority, trust_domain, DNS_NAMES, clock)
        self.server = WebhookServer(injector, self.cert.ssl_context, host, port)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        await self.server.start()
        self._task = asyncio.create_task(self.cert.follow())
        log.info("sidecar injection webhook on %s:%d", self.server.host, self.server.port)

    def use(self, authority: PublishedAuthority) -> None:
        """Re-issued by the new signer at half-life (the API server's caBundle is static)."""
        self.cert.use(authority)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.server.stop()
