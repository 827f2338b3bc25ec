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
import ssl

from ca.published import PublishedAuthority
from ca.server import ROTATION_CHECK_SECONDS, ServerCert, issue_server_cert
from injector.config import CONTROL_PLANE_NAMESPACE, WEBHOOK_SERVICE, InjectorConfig
from injector.webhook import WebhookServer, webhook_dns_names
from meshward_common.clock import Clock
from meshward_common.tls_files import load_cert_chain_pem

log = logging.getLogger(__name__)
DNS_NAMES = ("localhost", *webhook_dns_names(WEBHOOK_SERVICE, CONTROL_PLANE_NAMESPACE))


def webhook_ssl_context(cert: ServerCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_cert_chain_pem(ctx, cert.cert_pem, cert.key_pem)
    return ctx


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
        self.authority = authority
        self.trust_domain = trust_domain
        self.clock = clock
        self.cert = issue_server_cert(authority.signer, trust_domain, clock(), DNS_NAMES)
        self.ssl_context = webhook_ssl_context(self.cert)
        self.server = WebhookServer(injector, self.ssl_context, host, port)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        await self.server.start()
        self._task = asyncio.create_task(self._rotate())
        log.info("sidecar injection webhook on %s:%d", self.server.host, self.server.port)

    def use(self, authority: PublishedAuthority) -> None:
        self.authority = authority

    async def _rotate(self) -> None:
        while True:
            await asyncio.sleep(ROTATION_CHECK_SECONDS)
            cert, now = self.cert, self.clock()
            if now < cert.not_before + (cert.not_after - cert.not_before) / 2:
                continue
            self.cert = issue_server_cert(self.authority.signer, self.trust_domain, now, DNS_NAMES)
            # New handshakes use the new certificate; open connections keep theirs.
            load_cert_chain_pem(self.ssl_context, self.cert.cert_pem, self.cert.key_pem)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.server.stop()
