"""A workload process for the namespace tests: fetch an X.509-SVID once, print the outcome as JSON.

Run inside a pod's network namespace as the pod's uid: `python workload_client.py SOCKET [--no-header]`.
Prints {"ids": [...], "code": "OK", "keys": [sha256 of each leaf's public key]} or
{"ids": [], "code": "PERMISSION_DENIED"}.
"""

from __future__ import annotations

import hashlib
import json
import sys

import grpc
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from spiffe import X509Svid
from spiffe._proto import workload_pb2, workload_pb2_grpc


def main() -> None:
    socket_path = sys.argv[1]
    metadata = None if "--no-header" in sys.argv else (("workload.spiffe.io", "true"),)
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        try:
            response = next(
                iter(
                    stub.FetchX509SVID(
                        workload_pb2.X509SVIDRequest(), metadata=metadata, timeout=20
                    )
                )
            )
        except grpc.RpcError as exc:
            print(json.dumps({"ids": [], "code": exc.code().name}))
            return
    keys = []
    for svid in response.svids:
        parsed = X509Svid.parse_raw(svid.x509_svid, svid.x509_svid_key)  # checks key matches leaf
        spki = parsed.leaf.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )
        keys.append(hashlib.sha256(spki).hexdigest())
    print(json.dumps({"ids": [s.spiffe_id for s in response.svids], "code": "OK", "keys": keys}))


if __name__ == "__main__":
    main()
