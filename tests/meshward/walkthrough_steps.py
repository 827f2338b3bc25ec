"""The README walkthrough's steps that read the same whichever source of truth the mesh has (files,
or a Kubernetes API server): one implementation each, used by both walkthrough tests. The steps
that differ (how a policy is applied, what inspection shows of pods) stay in each test."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from tests.meshward.test_mesh_harness import REPO

TD = "spiffe://cluster.local"
INGRESS_ID = f"{TD}/ns/istio-system/sa/meshward-ingress"
PRODUCTPAGE_ID = f"{TD}/ns/default/sa/bookinfo-productpage"
REVIEWS_ID = f"{TD}/ns/default/sa/bookinfo-reviews"
RATINGS_ID = f"{TD}/ns/default/sa/bookinfo-ratings"
DENY_POLICY = REPO / "meshward" / "demo" / "policies" / "deny-reviews-from-productpage.yaml"
ALLOW_GRPC_POLICY = REPO / "meshward" / "demo" / "policies" / "allow-ratings-grpc-from-reviews.yaml"
GET_RATING = ("ratings:9090", "GetRating", "1")  # `python -m meshward.demo.rpc` arguments
DENIED = "PERMISSION_DENIED: RBAC: access denied"  # the rpc command's line for a refused call
GRPC_IN = {"reporter": "destination", "request_protocol": "grpc"}
PODS = ("productpage", "details", "reviews-v1", "reviews-v2", "ratings")
SERVICES = ("ingress", "productpage", "details", "reviews", "ratings")
REVIEWS_URL = "http://reviews:9080/reviews/1"


def curl_ingress(mesh: Any) -> str:
    """Step 2: the page through the ingress, each hop's caller identity; the request's trace id."""
    status, page = mesh.ingress("/productpage")
    assert status == 200, page
    callers = {hop["service"]: hop["caller"] for hop in page["hops"]}
    assert callers == {
        "productpage": INGRESS_ID,
        "details": PRODUCTPAGE_ID,
        "reviews": PRODUCTPAGE_ID,
        "ratings": REVIEWS_ID,
    }
    assert all(hop["status"] == "200" for hop in page["hops"])
    xfcc = page["received_headers"]["x-forwarded-client-cert"]
    assert xfcc.startswith(f"By={PRODUCTPAGE_ID};Hash=")
    assert xfcc.endswith(f";URI={INGRESS_ID}")
    trace_id: str = page["trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id), page["received_headers"]
    assert page["data"]["details"]["trace_id"] == trace_id
    grpc_hop(page, trace_id)
    return trace_id


def grpc_hop(page: dict[str, Any], trace_id: str) -> None:
    """The page's ratings hop went over gRPC, through both sidecars, with reviews' identity in
    the x-forwarded-client-cert metadata ratings received, in the page's trace."""
    assert {h["service"]: h["protocol"] for h in page["hops"]} == {
        "productpage": "http",
        "details": "http",
        "reviews": "http",
        "ratings": "grpc",
    }
    ratings = page["data"]["reviews"]["data"]["ratings"]
    assert (ratings["status"], ratings["grpc_status"]) == (200, "OK"), ratings
    assert ratings["identity"] == {"caller": REVIEWS_ID, "callee": RATINGS_ID}
    xfcc = ratings["received_headers"]["x-forwarded-client-cert"]
    assert xfcc.startswith(f"By={RATINGS_ID};Hash=")
    assert xfcc.endswith(f";URI={REVIEWS_ID}")
    assert ratings["trace_id"] == trace_id


def curl_between_pods(mesh: Any) -> None:
    """Step 3: productpage -> reviews through both sidecars, as the app user."""
    status, body = mesh.exec_curl("productpage", REVIEWS_URL)
    assert status == 200, body
    assert f"URI={PRODUCTPAGE_ID}" in body
    assert f"By={REVIEWS_ID}" in body
    assert '"id": 1' in body


def grpc_between_pods(mesh: Any) -> None:
    """Step 3b: reviews -> ratings' GetRating with the rpc command, through both sidecars; ratings
    sees reviews' SPIFFE ID; both sidecars count the calls as request_protocol grpc, status 0."""
    status, out = mesh.rpc("reviews-v1", *GET_RATING)
    assert status == 0, out
    reply = json.loads(out)
    assert (reply["caller"], reply["callee"], reply["product_id"]) == (REVIEWS_ID, RATINGS_ID, 1)
    assert reply["received_metadata"]["x-forwarded-client-cert"].endswith(f";URI={REVIEWS_ID}")
    grpc_in = {**GRPC_IN, "source_principal": REVIEWS_ID, "destination_principal": RATINGS_ID}
    assert mesh.requests_total("ratings", **grpc_in, grpc_response_status="0") >= 2
    grpc_out = {"reporter": "source", "request_protocol": "grpc", "grpc_response_status": "0"}
    grpc_out["destination_service_name"] = "ratings"
    sent = sum(mesh.requests_total(pod, **grpc_out) for pod in ("reviews-v1", "reviews-v2"))
    assert sent >= 2


def grpc_allow_enforced(mesh: Any, within_s: float) -> None:
    """Step 5b, once the ALLOW policy on ratings is in: only reviews' GetRating passes, the rest
    is refused PERMISSION_DENIED (grpc-status 7), ratings' HTTP API 403; the page keeps its
    ratings."""
    took, out = mesh.poll_rpc("productpage", 1, *GET_RATING, wait_s=within_s)
    print(f"gRPC ALLOW policy enforced after {took:.2f} s")
    assert out.strip() == DENIED
    assert mesh.rpc("reviews-v1", *GET_RATING)[0] == 0
    status, out = mesh.rpc("reviews-v2", "ratings:9090", "SetRating", "1", "--stars", "1")
    assert (status, out.strip()) == (1, DENIED)
    assert mesh.exec_curl("reviews-v1", "http://ratings:9080/ratings/1")[0] == 403
    status, page = mesh.ingress("/productpage")
    assert status == 200, page
    grpc_hop(page, page["trace_id"])
    assert mesh.requests_total("ratings", **GRPC_IN, grpc_response_status="7") >= 2


def grpc_allow_lifted(mesh: Any, within_s: float) -> None:
    """Step 5b, once the ALLOW policy is gone: productpage may call GetRating again."""
    took, out = mesh.poll_rpc("productpage", 0, *GET_RATING, wait_s=within_s)
    print(f"gRPC ALLOW policy lifted after {took:.2f} s")
    assert json.loads(out)["caller"] == PRODUCTPAGE_ID, out


def wait_for_reviews_status(mesh: Any, want: int, within_s: float) -> tuple[float, int, str]:
    """productpage -> reviews until it answers `want` (or `within_s` passed): (seconds, status, body)."""
    start = time.monotonic()
    while True:
        status, body = mesh.exec_curl("productpage", REVIEWS_URL)
        elapsed = time.monotonic() - start
        if status == want or elapsed > within_s:
            return elapsed, status, body
        time.sleep(0.2)


def deny_enforced(mesh: Any, within_s: float) -> None:
    """Step 4, once the DENY policy is in: Envoy's 403 for productpage -> reviews, others pass."""
    took, status, body = wait_for_reviews_status(mesh, 403, within_s)
    print(f"DENY policy enforced after {took:.2f} s")
    assert (status, body.strip()) == (403, "RBAC: access denied")
    assert mesh.exec_curl("productpage", "http://details:9080/details/1")[0] == 200
    assert mesh.exec_curl("reviews-v1", "http://ratings:9080/ratings/1")[0] == 200
    _, page = mesh.ingress("/productpage")
    assert page["data"]["reviews"]["status"] == 403


def deny_lifted(mesh: Any, within_s: float) -> None:
    """Step 5, once the DENY policy is gone: allowed again."""
    took, status, body = wait_for_reviews_status(mesh, 200, within_s)
    print(f"DENY policy lifted after {took:.2f} s")
    assert status == 200, body


def trace_through_every_service(mesh: Any, trace_id: str, within_s: float) -> None:
    """Step 6: `meshward traces` shows the ingress request's trace, through every service."""
    deadline = time.monotonic() + within_s
    while True:
        # 100: the gRPC calls and polls since step 2 are traces of their own
        done = mesh.cli("traces", "--query-url", mesh.query_url, "-n", "100")
        if trace_id in done.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert done.returncode == 0, done.stderr
    assert f"trace {trace_id}" in done.stdout, done.stdout + done.stderr
    for service in SERVICES:
        assert f"{service}.default" in done.stdout
    # the gRPC hop's spans: the method after the route, grpc-status 0 beside the HTTP status
    rows = [line for line in done.stdout.splitlines() if "/meshward.demo.Ratings/GetRating" in line]
    assert any("grpc-status=0" in row for row in rows), done.stdout


def status_and_secret(mesh: Any) -> str:
    """Step 7's common part: every pod ready in `meshward status`, reviews-v2's SVID in
    `proxy-config secret`, `meshward check` passing. The status output, for the mode's own checks."""
    done = mesh.cli("status")
    assert done.returncode == 0, done.stderr
    for pod in PODS:
        row = next(line for line in done.stdout.splitlines() if f" {pod} " in line)
        assert " true " in row, row
        assert "sidecar:up,app:up" in row, row
    status: str = done.stdout
    done = mesh.cli("proxy-config", "secret", "reviews-v2")
    assert done.returncode == 0, done.stderr
    assert f"SPIFFE ID: {REVIEWS_ID}" in done.stdout
    assert "ROOTCA" in done.stdout
    done = mesh.cli("check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Status check results are" in done.stdout
    return status
