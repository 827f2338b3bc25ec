"""`kube-inject` over Kubernetes YAML: every Pod template in Pods, Deployments, StatefulSets,
DaemonSets, ReplicaSets, Jobs, CronJobs and Lists gets the sidecar; other kinds pass unchanged.

Each Pod template goes through the webhook's own path (`pod_patch`, then the patch applied), so
`kube-inject` and the webhook cannot disagree. Pure: YAML text in, YAML text and warnings out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from injector import jsonpatch
from injector.config import InjectorConfig
from injector.selection import injection_required
from injector.template import inject_pod
from meshward_common.errors import ConfigError, InvalidRequest

TEMPLATE_KINDS = (
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "ReplicationController",
)


def pod_patch(pod: dict[str, Any], config: InjectorConfig) -> list[jsonpatch.Op]:
    """The JSON patch that injects `pod` (InvalidRequest when it cannot be injected)."""
    return jsonpatch.diff(pod, inject_pod(pod, config))


@dataclass
class InjectResult:
    text: str
    warnings: list[str] = field(default_factory=list)


def _template_of(doc: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The Pod template inside `doc` (a dict holding metadata + spec, edited in place), and a
    name for messages; None for kinds without Pods."""
    kind = doc.get("kind")
    name = f'{kind} "{(doc.get("metadata") or {}).get("name", "")}"'
    spec = doc.get("spec")
    if kind == "Pod":
        return doc, name
    if kind in TEMPLATE_KINDS:
        template = spec.get("template") if isinstance(spec, dict) else None
        if not isinstance(template, dict):
            raise InvalidRequest(f"{name} has no spec.template")
        return template, name
    if kind == "CronJob":
        job = spec.get("jobTemplate") if isinstance(spec, dict) else None
        job_spec = job.get("spec") if isinstance(job, dict) else None
        template = job_spec.get("template") if isinstance(job_spec, dict) else None
        if not isinstance(template, dict):
            raise InvalidRequest(f"{name} has no spec.jobTemplate.spec.template")
        return template, name
    return None, name


def inject_object(doc: Any, config: InjectorConfig, warn: Callable[[str], None]) -> Any:
    if not isinstance(doc, dict):
        return doc
    if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        doc["items"] = [inject_object(item, config, warn) for item in doc["items"]]
        return doc
    template, name = _template_of(doc)
    if template is None:
        return doc
    metadata = template.get("metadata") or {}
    namespace = str(
        metadata.get("namespace") or (doc.get("metadata") or {}).get("namespace") or "default"
    )
    decision = injection_required(metadata, template.get("spec") or {}, namespace)
    if not decision.inject:
        warn(f"===> Skipping injection because {name}: {decision.reason}")
        return doc
    try:
        injected = jsonpatch.apply(template, pod_patch(template, config))
    except InvalidRequest as exc:
        raise InvalidRequest(f"{name}: {exc}") from exc
    template.clear()
    template.update(injected)
    return doc


def _document_of_line(text: str, line: int) -> int:
    """1-based number of the YAML document holding `line` (1-based), counting `---` markers."""
    number, seen_content = 1, False
    for i, raw in enumerate(text.splitlines(), start=1):
        if i >= line:
            break
        if raw.startswith("---"):
            if seen_content:
                number += 1
                seen_content = False
        elif raw.strip() and not raw.lstrip().startswith("#"):
            seen_content = True
    return number


def inject_text(text: str, config: InjectorConfig, source: str) -> InjectResult:
    """Every document of `text`, injected, as istioctl prints them (each followed by `---`)."""
    result = InjectResult("")
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError(
            f"{source}: document {_document_of_line(text, line)}, line {line}: "
            f"invalid YAML: {exc.problem or exc}"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
    out: list[str] = []
    for number, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc:
            raise ConfigError(f"{source}: document {number}: not a Kubernetes object (no kind)")
        try:
            injected = inject_object(doc, config, result.warnings.append)
        except InvalidRequest as exc:
            raise ConfigError(f"{source}: document {number}: {exc}") from exc
        out.append(yaml.safe_dump(injected, sort_keys=False) + "---\n")
    result.text = "".join(out)
    return result
