"""A gRPC client of the demo's ratings service, for a shell in a pod (as `curl` is for HTTP):

    meshward exec reviews-v1 -- python -m meshward.demo.rpc ratings:9090 GetRating 1
    meshward exec reviews-v1 -- python -m meshward.demo.rpc ratings:9090 SetRating 1 --stars 3

prints the reply as JSON (exit 0), or the call's status as one line `CODE: message` (exit 1), e.g.
`PERMISSION_DENIED: RBAC: access denied` when a policy refuses the method.
"""

from __future__ import annotations

import json
import sys

import click
import grpc
from google.protobuf.json_format import MessageToDict

from meshward.demo.ratings_grpc import CHANNEL_OPTIONS, STARS
from meshward_common.protos import meshward_demo_pb2 as pb2
from meshward_common.protos import meshward_demo_pb2_grpc as pb2_grpc


@click.command()
@click.argument("target", metavar="HOST:PORT")
@click.argument("method", type=click.Choice(["GetRating", "SetRating"]))
@click.argument("product_id", type=click.IntRange(0, 2**31 - 1))
@click.option("--reviewer", default="Reviewer1", show_default=True, help="SetRating: who rates")
@click.option(
    "--stars", default=5, show_default=True, type=click.IntRange(STARS[0], STARS[-1]),
    help="SetRating: the rating",
)  # fmt: skip
@click.option("--timeout", default=10.0, show_default=True, help="seconds (grpc-timeout)")
def main(
    target: str, method: str, product_id: int, reviewer: str, stars: int, timeout: float
) -> None:
    """Call meshward.demo.Ratings/METHOD at HOST:PORT (plaintext: the pod's sidecar adds mTLS)."""
    with grpc.insecure_channel(target, options=list(CHANNEL_OPTIONS)) as channel:
        stub = pb2_grpc.RatingsStub(channel)  # type: ignore[no-untyped-call]
        try:
            if method == "GetRating":
                reply = stub.GetRating(pb2.GetRatingRequest(product_id=product_id), timeout=timeout)
            else:
                request = pb2.SetRatingRequest(
                    product_id=product_id, reviewer=reviewer, stars=stars
                )
                reply = stub.SetRating(request, timeout=timeout)
        except grpc.RpcError as exc:
            click.echo(f"{exc.code().name}: {exc.details() or ''}", err=True)
            sys.exit(1)
    body = MessageToDict(
        reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    click.echo(json.dumps(body, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
