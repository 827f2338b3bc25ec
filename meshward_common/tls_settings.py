"""The TLS every endpoint of the mesh speaks, set in one place: TLS 1.2 at least and, on 1.2, only
ECDHE key exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305); TLS 1.3's suites are all AEAD.

CBC suites (MAC-then-encrypt: Lucky13-style padding oracles, and the SHA-1 ones) are not offered:
what Istio's sidecars and istiod accept. grpcio's own TLS (the CA's `--mtls-listen` port) cannot
be configured per server; its default list is already ECDHE AES-GCM only (measured with openssl
s_client, asserted in tests/ca/test_cipher_suites.py).
"""

from __future__ import annotations

import ssl

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def restrict_to_modern_tls(ctx: ssl.SSLContext) -> None:
    """TLS 1.2+, AEAD suites only, no compression (CRIME), no renegotiation."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
