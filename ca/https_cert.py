"""The serving certificate of the supervisor's HTTPS ports (the sidecar injection webhook, the
SPIFFE bundle endpoint): issued by this CA with the control plane's SPIFFE ID and the port's DNS
names, re-issued at half-life (and when its port asks, e.g. once the signer changed) into the
same SSLContext: new handshakes take the new certificate, open
connections keep theirs. No client certificate is asked for (neither the API server nor a
bundle endpoint's clients present one)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Sequence

from ca.published import PublishedAuthority
from ca.server import ROTATION_CHECK_SECONDS, ServerCert, issue_server_cert
from meshward_common.clock import Clock
from meshward_common.tls_files import load_cert_chain_pem
from meshward_common.tls_settings import restrict_to_modern_tls


def https_server_context(cert: ServerCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    restrict_to_modern_tls(ctx)
    load_cert_chain_pem(ctx, cert.cert_pem, cert.key_pem)
    return ctx


def half_life_passed(cert: ServerCert, now: dt.datetime) -> bool:
    return now >= cert.not_before + (cert.not_after - cert.not_before) / 2


class HttpsServerCert:
    def __init__(
        self,
        authority: PublishedAuthority,
        trust_domain: str,
        dns_names: Sequence[str],
        clock: Clock,
    ) -> None:
        self.authority = authority
        self.trust_domain = trust_domain
        self.dns_names = tuple(dns_names)
        self.clock = clock
        self.cert = issue_server_cert(authority.signer, trust_domain, clock(), self.dns_names)
        self.ssl_context = https_server_context(self.cert)

    def use(self, authority: PublishedAuthority) -> bool:
        """A new signing authority, used from the next re-issue on; True if its signer is new."""
        signer_changed = authority.signer.cert != self.authority.signer.cert
        self.authority = authority
        return signer_changed

    def reissue(self, now: dt.datetime) -> None:
        self.cert = issue_server_cert(self.authority.signer, self.trust_domain, now, self.dns_names)
        load_cert_chain_pem(self.ssl_context, self.cert.cert_pem, self.cert.key_pem)

    async def follow(self) -> None:
        """Re-issue at half-life, forever (run as a task)."""
        while True:
            await asyncio.sleep(ROTATION_CHECK_SECONDS)
            now = self.clock()
            if half_life_passed(self.cert, now):
                self.reissue(now)
