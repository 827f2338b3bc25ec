"""The TLS every endpoint of the mesh speaks, set in one place: TLS 1.2 at least and, on 1.2, only
ECDHE key exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305); TLS 1.3's suites are all AEAD.

CBC suites (MAC-then-encrypt: Lucky13-style padding oracles, and the SHA-1 ones) are not offered:
what Istio's sidecars and istiod accept. The CA's `--mtls-listen` port ends TLS in rustls
(`native/ca_grpc`), which has no CBC suites at all and is limited there to TLS 1.2 and 1.3: the
same rule (asserted in tests/ca/test_cipher_suites.py).
"""

from __future__ import annotations

import ssl

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def restrict_to_modern_tls(ctx: ssl.SSLContext) -> None:
    """TLS 1.2+, AEAD suites only, no compression (CRIME), no renegotiation."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
