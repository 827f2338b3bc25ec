"""Fetching a foreign trust domain's bundle from its SPIFFE bundle endpoint (`https_spiffe`).

The TLS handshake verifies the endpoint's chain against the bundle of the endpoint ID's trust
domain only (never a pool of every root), then the leaf must be a valid X.509-SVID with exactly the
configured endpoint SPIFFE ID (Federation spec 5.2.2.4) before a byte of the request is sent. The
request is HTTP/1.0, so the answer's body runs to the connection's close (no chunked coding).
Redirects are followed (at most MAX_REDIRECTS, https only), each target held to the same checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import urllib.parse
from collections.abc import Sequence

from cryptography import x509

from ca.federation_config import check_endpoint_url
from meshward_common.errors import ConfigError, SpiffeIdError, SvidError, Unauthenticated
from meshward_common.spiffe_bundle import MAX_BUNDLE_BYTES, SpiffeBundle, parse_bundle
from meshward_common.spiffe_id import SpiffeId
from meshward_common.svid import leaf_problems, pem_of, spiffe_id_of

FETCH_TIMEOUT = 10.0
MAX_REDIRECTS = 3
MAX_HEAD_BYTES = 16 * 1024
_REDIRECTS = {301, 302, 303, 307, 308}


class FetchError(Exception):
    """One line saying why a fetch failed (the last good bundle stays in force)."""


def client_context(roots: Sequence[x509.Certificate]) -> ssl.SSLContext:
    """TLS that trusts exactly these roots; no hostname check (the endpoint is named by its
    SPIFFE ID, which `check_endpoint_leaf` checks)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=pem_of(roots).decode())
    return ctx


def check_endpoint_leaf(der: bytes | None, endpoint_id: SpiffeId, now: dt.datetime) -> None:
    """The endpoint's leaf (its chain already verified) is an X.509-SVID for `endpoint_id`."""
    if not der:
        raise Unauthenticated("the bundle endpoint presented no certificate")
    leaf = x509.load_der_x509_certificate(der)
    problems = leaf_problems(leaf)
    if problems:
        raise Unauthenticated("the bundle endpoint's certificate is not an X.509-SVID: "
                              + "; ".join(problems))  # fmt: skip
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise Unauthenticated("the bundle endpoint's certificate is outside its validity window")
    try:
        presented = spiffe_id_of(leaf)
    except SpiffeIdError as exc:
        raise Unauthenticated(f"the bundle endpoint's certificate: {exc}") from exc
    if presented != endpoint_id:
        raise Unauthenticated(
            f"the bundle endpoint presented {presented}, not the configured {endpoint_id}"
        )


async def _get_once(
    url: str, ctx: ssl.SSLContext, endpoint_id: SpiffeId, now: dt.datetime
) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(url)
    host, port = str(parts.hostname), parts.port or 443
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=host, limit=MAX_HEAD_BYTES
        )
    except ssl.SSLError as exc:
        why = getattr(exc, "verify_message", None) or exc.reason or exc
        raise FetchError(f"TLS handshake with {host}:{port} failed: {why}") from exc
    except OSError as exc:
        raise FetchError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            check_endpoint_leaf(der, endpoint_id, now)
        except (Unauthenticated, ValueError) as exc:
            raise FetchError(f"{url}: {exc}") from exc
        authority = parts.netloc.rpartition("@")[2]
        writer.write(
            f"GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n"
            "User-Agent: meshward\r\n\r\n".encode()
        )
        await writer.drain()
        data = bytearray()
        while len(data) <= MAX_HEAD_BYTES + MAX_BUNDLE_BYTES:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
    except (OSError, ssl.SSLError) as exc:
        raise FetchError(f"reading from {host}:{port} failed: {exc}") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return _parse_response(bytes(data), url)


def _parse_response(data: bytes, url: str) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise FetchError(f"{url}: no complete HTTP response")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if (
        len(status_line) < 2
        or not status_line[0].startswith("HTTP/")
        or not status_line[1].isdigit()
    ):
        raise FetchError(f"{url}: not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if len(body) > MAX_BUNDLE_BYTES:
        raise FetchError(f"{url}: the bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) < len(body):
        body = body[: int(length)]
    return int(status_line[1]), headers, body


async def fetch_bundle(
    url: str,
    trust_domain: str,
    endpoint_id: SpiffeId,
    endpoint_roots: Sequence[x509.Certificate],
    now: dt.datetime,
) -> SpiffeBundle:
    """GET the bundle of `trust_domain` from `url`, authenticating the endpoint as
    `endpoint_id` with `endpoint_roots` (the bundle of the endpoint ID's trust domain)."""
    if not endpoint_roots:
        raise FetchError(f"no bundle of {endpoint_id.trust_domain} to authenticate the endpoint")
    ctx = client_context(endpoint_roots)
    target = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            status, headers, body = await asyncio.wait_for(
                _get_once(target, ctx, endpoint_id, now), FETCH_TIMEOUT
            )
        except TimeoutError as exc:
            raise FetchError(f"{target}: no answer within {FETCH_TIMEOUT:.0f}s") from exc
        if status in _REDIRECTS and "location" in headers:
            target = urllib.parse.urljoin(target, headers["location"])
            try:
                check_endpoint_url(target)
            except ConfigError as exc:
                raise FetchError(f"redirected to an unusable URL: {exc}") from exc
            continue
        if status != 200:
            raise FetchError(f"{target}: HTTP {status}: {body[:200].decode(errors='replace')!r}")
        try:
            return parse_bundle(body, trust_domain, target)
        except SvidError as exc:
            raise FetchError(str(exc)) from exc
    raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")
