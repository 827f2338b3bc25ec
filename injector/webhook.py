"""The mutating admission webhook: `admission.k8s.io/v1` AdmissionReview in, JSONPatch out.

`review` is pure (request body bytes in; HTTP status, answer and one log line out); `WebhookServer`
is the HTTPS shell (aiohttp) the control plane runs on 15017 (the Service's 443), with a serving
certificate its own CA issues for the Service's DNS names.

Never a 500. A body that is not an AdmissionReview gets a 400 with the reason (the API server
then applies the configuration's failurePolicy). A Pod the webhook cannot patch (a bad
traffic annotation, a probe on a port the container does not have, a name clash) is answered by
the injector's `failure_policy`, which `meshward manifest generate` also writes into the
MutatingWebhookConfiguration: `Fail` refuses the Pod (allowed: false, code 400, the reason in
status.message, which kubectl prints), `Ignore` admits it unchanged with the reason as an
admission warning. Either way one log line names the Pod and the reason.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from injector.config import InjectorConfig
from injector.selection import injection_required
from injector.workloads import pod_patch
from meshward_common.errors import InvalidRequest
from meshward_common.https_site import start_https_site

log = logging.getLogger(__name__)
API_VERSION = "admission.k8s.io/v1"
INJECT_PATH = "/inject"
MAX_BODY_BYTES = 3 * 1024 * 1024  # the API server's own request limit for an object


@dataclass(frozen=True)
class Answer:
    status: int  # HTTP status
    body: dict[str, Any] | str  # an AdmissionReview, or a plain-text reason for a 400
    log_line: str


def _pod_name(pod: Mapping[str, Any]) -> str:
    metadata = pod.get("metadata") or {}
    name = metadata.get("name") or (
        f"{metadata['generateName']}*" if metadata.get("generateName") else "<unnamed>"
    )
    return str(name)


def _response(uid: str, allowed: bool, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": allowed, **extra},
    }


def review(body: bytes, config: InjectorConfig) -> Answer:
    """Answer one AdmissionReview request body."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        return Answer(
            400, f"AdmissionReview: body is not JSON: {exc}\n", f"refused: body is not JSON ({exc})"
        )
    request = data.get("request") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("apiVersion") != API_VERSION
        or data.get("kind") != "AdmissionReview"
        or not isinstance(request, dict)
        or not isinstance(request.get("uid"), str)
    ):
        reason = f"expected an {API_VERSION} AdmissionReview with a request and its uid"
        return Answer(400, reason + "\n", f"refused: {reason}")
    uid = request["uid"]
    kind = (request.get("kind") or {}).get("kind")
    pod = request.get("object")
    namespace = str(request.get("namespace") or "")
    if kind != "Pod" or request.get("operation") != "CREATE" or not isinstance(pod, dict):
        return Answer(
            200,
            _response(uid, True),
            f"admitted {kind} {request.get('operation')}: not a Pod CREATE",
        )
    if isinstance(pod.get("metadata"), dict) and not pod["metadata"].get("namespace"):
        pod = {**pod, "metadata": {**pod["metadata"], "namespace": namespace}}
    who = f"pod {namespace}/{_pod_name(pod)}"
    decision = injection_required(pod.get("metadata") or {}, pod.get("spec") or {}, namespace)
    if not decision.inject:
        return Answer(200, _response(uid, True), f"{who}: not injected: {decision.reason}")
    try:
        patch = pod_patch(pod, config)
    except InvalidRequest as exc:
        return _cannot_inject(uid, who, str(exc), config)
    except Exception as exc:  # a bug must not become a 500: the failure policy still decides
        log.exception("%s: injection failed", who)
        return _cannot_inject(uid, who, f"internal error ({type(exc).__name__})", config)
    encoded = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    return Answer(
        200,
        _response(uid, True, patchType="JSONPatch", patch=encoded),
        f"{who}: injected ({len(patch)} patch operations)",
    )


def _cannot_inject(uid: str, who: str, reason: str, config: InjectorConfig) -> Answer:
    message = f"meshward sidecar injector: cannot inject {who}: {reason}"
    if config.failure_policy == "Ignore":
        return Answer(
            200,
            _response(uid, True, warnings=[message]),
            f"{who}: admitted without a sidecar (failurePolicy Ignore): {reason}",
        )
    status = {"code": 400, "reason": "BadRequest", "message": message}
    return Answer(
        200,
        _response(uid, False, status=status),
        f"{who}: refused (failurePolicy Fail): {reason}",
    )


class WebhookServer:
    """HTTPS on `host:port`, POST /inject. `start()` returns once it listens; `port` is bound."""

    def __init__(
        self,
        config: InjectorConfig,
        ssl_context: ssl.SSLContext,
        host: str,
        port: int,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self._say = say or log.info
        self._runner: Any = None

    async def start(self) -> None:
        from aiohttp import web

        async def inject(request: web.Request) -> web.StreamResponse:
            if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
                self._say(f"webhook: refused: body of {request.content_length} bytes")
                return web.Response(status=413, text="AdmissionReview too large\n")
            answer = review(await request.read(), self.config)
            self._say(f"webhook: {answer.log_line}")
            if isinstance(answer.body, str):
                return web.Response(status=answer.status, text=answer.body)
            return web.json_response(answer.body, status=answer.status)

        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(INJECT_PATH, inject)
        self._runner, self.port = await start_https_site(
            app, self.host, self.port, self.ssl_context, "webhook"
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def webhook_dns_names(
    service: str, namespace: str, cluster_domain: str = "cluster.local"
) -> tuple[str, ...]:
    """The names the API server may dial for the webhook's Service."""
    return (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.{cluster_domain}",
    )
