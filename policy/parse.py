"""Istio policy YAML into `policy.model` values, refusing anything we would not enforce exactly.

Every problem is reported as `file:line: field: reason` and all problems of a file are collected,
so `meshward authz lint` shows them at once. A file with any problem yields no resources at all:
half a policy file applied could allow what the whole file meant to deny.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from meshward_common.errors import ConfigError
from meshward_common.yaml_lines import (
    Document,
    Limits,
    LineDict,
    YamlError,
    load_documents,
    read_text,
    shown,
    shown_key,
)
from policy.model import (
    Action,
    AuthorizationPolicy,
    Constraint,
    PeerAuthentication,
    PeerMode,
    Resource,
    Rule,
    first_of_each,
)
from policy.vocabulary import (
    API_VERSIONS,
    CONDITION_KEYS,
    HEADER_KEY_RE,
    KINDS,
    METADATA_KEYS,
    NAME_RE,
    OPERATION_FIELDS,
    PEER_MODES,
    SOURCE_FIELDS,
    TOP_LEVEL_KEYS,
    kind_of,
    port_number,
    value_problem,
)


@dataclass(frozen=True)
class Problem:
    source: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.field}: {self.reason}"


class PolicyFileError(ConfigError):
    """A policy file was refused; `problems` lists every reason, each with file and line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


# What one policy file may cost (meshward_common.yaml_lines): Istio policies are a few KiB; a
# file of 1 MiB or 100,000 values (after aliases) is not a policy an operator wrote by hand.
POLICY_LIMITS = Limits(max_bytes=1 << 20, max_nodes=100_000, max_depth=64, what="policy files")


def read_policy_text(path: Path) -> str:
    """A policy file's text, read within POLICY_LIMITS; PolicyFileError (one problem) otherwise."""
    try:
        return read_text(path, POLICY_LIMITS)
    except YamlError as exc:
        raise PolicyFileError([Problem(exc.source, exc.line, "file", exc.reason)]) from exc


def parse_text(text: str, source: str) -> tuple[Resource, ...]:
    """All policies of one YAML text, or PolicyFileError listing every problem in it."""
    try:
        documents = load_documents(text, source, POLICY_LIMITS)
    except YamlError as exc:
        raise PolicyFileError([Problem(source, exc.line, "yaml", exc.reason)]) from exc
    parser = _Parser(source)
    resources = []
    for index, doc in enumerate(documents):
        resource = parser.document(doc, index)
        if resource is not None:
            resources.append(resource)
    for repeat, first in first_of_each(resources)[1]:
        parser.problem(
            repeat.line,
            "metadata.name",
            f"{repeat.kind} {repeat.key} is defined twice (first at line {first.line})",
        )
    if parser.problems:
        raise PolicyFileError(sorted(parser.problems, key=lambda p: p.line))
    return tuple(resources)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def problem(self, line: int, field: str, reason: str) -> None:
        self.problems.append(Problem(self.source, line, field, reason))

    # -- helpers -------------------------------------------------------------------------------

    def mapping(self, value: Any, line: int, field: str) -> LineDict | None:
        if value is None:
            empty = LineDict()
            empty.line, empty.key_lines = line, {}
            return empty
        if not isinstance(value, LineDict):
            self.problem(line, field, f"must be a mapping, got {kind_of(value)}")
            return None
        return value

    def unknown_keys(
        self, m: LineDict, allowed: frozenset[str] | Mapping[str, Any], field: str
    ) -> None:
        for key in m:
            if key not in allowed:
                where = f"{field}.{shown_key(key)}" if field else shown_key(key)
                self.problem(
                    m.line_of(key),
                    where,
                    f"unknown field (expected one of: {', '.join(sorted(allowed))})",
                )

    def string_list(self, m: LineDict, key: str, field: str) -> tuple[str, ...] | None:
        value = m[key]
        line = m.line_of(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem(line, field, f"must be a list of strings, got {kind_of(value)}")
            return None
        out = []
        ok = True
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, str | int):
                self.problem(line, f"{field}[{i}]", f"must be a string, got {kind_of(item)}")
                ok = False
            elif item == "":
                self.problem(line, f"{field}[{i}]", "empty value")
                ok = False
            else:
                out.append(str(item))
        return tuple(out) if ok else None

    def match_labels(self, spec: LineDict, field: str) -> dict[str, str] | None:
        if "selector" not in spec:
            return None
        sel = self.mapping(spec["selector"], spec.line_of("selector"), f"{field}.selector")
        if sel is None:
            return None
        if "matchExpressions" in sel:
            self.problem(
                sel.line_of("matchExpressions"),
                f"{field}.selector.matchExpressions",
                "not supported; use matchLabels",
            )
        for key in sel:
            if key not in ("matchLabels", "matchExpressions"):
                self.problem(
                    sel.line_of(key),
                    f"{field}.selector.{shown_key(key)}",
                    "unknown field (expected matchLabels)",
                )
        labels = self.mapping(
            sel.get("matchLabels"), sel.line_of("matchLabels"), f"{field}.selector.matchLabels"
        )
        if labels is None:
            return None
        out: dict[str, str] = {}
        for k, v in labels.items():
            if not isinstance(v, str):
                self.problem(
                    labels.line_of(k),
                    f"{field}.selector.matchLabels.{shown_key(k)}",
                    f"label value must be a string (quote it), got {kind_of(v)}",
                )
            else:
                out[k] = v
        return out

    # -- documents -----------------------------------------------------------------------------

    def document(self, document: Document, index: int) -> Resource | None:
        doc = document.value
        if not isinstance(doc, LineDict):
            self.problem(
                document.line, f"document {index + 1}", f"must be a mapping, got {kind_of(doc)}"
            )
            return None
        before = len(self.problems)
        self.unknown_keys(doc, TOP_LEVEL_KEYS, "")
        api = doc.get("apiVersion")
        if not isinstance(api, str) or api not in API_VERSIONS:
            self.problem(
                doc.line_of("apiVersion"),
                "apiVersion",
                f"{shown(api)} is not one of {', '.join(sorted(API_VERSIONS))}",
            )
        kind = doc.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            self.problem(
                doc.line_of("kind"),
                "kind",
                f"{shown(kind)} is not AuthorizationPolicy or PeerAuthentication",
            )
            return None
        name, namespace = self.metadata(doc)
        spec = self.mapping(doc.get("spec"), doc.line_of("spec"), "spec")
        if spec is None:
            return None
        # A bad name is already reported; keep checking the spec so lint shows every problem.
        name, namespace = name or "invalid", namespace or "invalid"
        resource: Resource | None
        if kind == "AuthorizationPolicy":
            resource = self.authorization_policy(spec, name, namespace, doc.line)
        else:
            resource = self.peer_authentication(spec, name, namespace, doc.line)
        return resource if len(self.problems) == before else None

    def metadata(self, doc: LineDict) -> tuple[str | None, str | None]:
        meta = self.mapping(doc.get("metadata"), doc.line_of("metadata"), "metadata")
        if meta is None:
            return None, None
        self.unknown_keys(meta, METADATA_KEYS, "metadata")
        name = meta.get("name")
        if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
            self.problem(
                meta.line_of("name") if "name" in meta else doc.line_of("metadata"),
                "metadata.name",
                f"required, a lowercase DNS-1123 name; got {shown(name)}",
            )
            name = None
        namespace = meta.get("namespace", "default")
        if not isinstance(namespace, str) or NAME_RE.fullmatch(namespace) is None:
            self.problem(
                meta.line_of("namespace"),
                "metadata.namespace",
                f"must be a lowercase DNS-1123 name; got {shown(namespace)}",
            )
            namespace = None
        return name, namespace

    def authorization_policy(
        self, spec: LineDict, name: str, namespace: str, line: int
    ) -> AuthorizationPolicy | None:
        allowed = frozenset({"selector", "action", "rules", "targetRef", "targetRefs", "provider"})
        self.unknown_keys(spec, allowed, "spec")
        for key in ("targetRef", "targetRefs"):
            if key in spec:
                self.problem(
                    spec.line_of(key),
                    f"spec.{key}",
                    "not supported (no Gateway API here); select workloads with selector.matchLabels",
                )
        action = spec.get("action", "ALLOW")
        if action == "CUSTOM" or "provider" in spec:
            self.problem(
                spec.line_of("action" if action == "CUSTOM" else "provider"),
                "spec.action",
                "CUSTOM (external authorization provider) is not supported; use ALLOW, DENY or AUDIT",
            )
            return None
        if action not in ("ALLOW", "DENY", "AUDIT"):
            self.problem(
                spec.line_of("action"),
                "spec.action",
                f"{shown(action)} is not ALLOW, DENY or AUDIT",
            )
            return None
        labels = self.match_labels(spec, "spec")
        rules_value = spec.get("rules")
        rules: list[Rule] = []
        if rules_value is not None:
            if not isinstance(rules_value, list):
                self.problem(
                    spec.line_of("rules"),
                    "spec.rules",
                    f"must be a list, got {kind_of(rules_value)}",
                )
            else:
                for i, item in enumerate(rules_value):
                    rule = self.rule(item, spec.line_of("rules"), f"spec.rules[{i}]")
                    if rule is not None:
                        rules.append(rule)
        return AuthorizationPolicy(
            name, namespace, cast(Action, action), labels, tuple(rules), self.source, line
        )

    def rule(self, item: Any, line: int, field: str) -> Rule | None:
        m = self.mapping(item, line, field)
        if m is None:
            return None
        self.unknown_keys(m, frozenset({"from", "to", "when"}), field)
        sources = self.clauses(m, "from", "source", SOURCE_FIELDS, field)
        operations = self.clauses(m, "to", "operation", OPERATION_FIELDS, field)
        conditions = self.conditions(m, field)
        if sources is None or operations is None or conditions is None:
            return None
        return Rule(sources, operations, conditions, m.line)

    def clauses(
        self,
        rule: LineDict,
        key: str,
        inner: str,
        fields: Mapping[str, tuple[str, bool]],
        field: str,
    ) -> tuple[tuple[Constraint, ...], ...] | None:
        if key not in rule or rule[key] is None:
            return ()
        value = rule[key]
        if not isinstance(value, list):
            self.problem(
                rule.line_of(key), f"{field}.{key}", f"must be a list, got {kind_of(value)}"
            )
            return None
        out = []
        for i, item in enumerate(value):
            where = f"{field}.{key}[{i}]"
            wrapper = self.mapping(item, rule.line_of(key), where)
            if wrapper is None:
                return None
            self.unknown_keys(wrapper, frozenset({inner}), where)
            body = self.mapping(wrapper.get(inner), wrapper.line, f"{where}.{inner}")
            if body is None:
                return None
            self.unknown_keys(body, fields, f"{where}.{inner}")
            constraints = []
            for name in body:
                if name not in fields:
                    continue
                attribute, negate = fields[name]
                values = self.values(body, name, attribute, f"{where}.{inner}.{name}")
                if values:
                    constraints.append(Constraint(attribute, values, negate, name))
            if not constraints and not any(n not in fields for n in body):
                self.problem(
                    body.line,
                    f"{where}.{inner}",
                    "must not be empty (leave out the whole entry to match anything)",
                )
            out.append(tuple(constraints))
        return tuple(out)

    def conditions(self, rule: LineDict, field: str) -> tuple[Constraint, ...] | None:
        if "when" not in rule or rule["when"] is None:
            return ()
        value = rule["when"]
        if not isinstance(value, list):
            self.problem(
                rule.line_of("when"), f"{field}.when", f"must be a list, got {kind_of(value)}"
            )
            return None
        out = []
        for i, item in enumerate(value):
            where = f"{field}.when[{i}]"
            cond = self.mapping(item, rule.line_of("when"), where)
            if cond is None:
                return None
            self.unknown_keys(cond, frozenset({"key", "values", "notValues"}), where)
            key = cond.get("key")
            header = ""
            if not isinstance(key, str) or not key:
                self.problem(cond.line_of("key"), f"{where}.key", "required")
                continue
            header_match = HEADER_KEY_RE.fullmatch(key)
            if header_match:
                attribute, header = "request.headers", header_match.group(1).lower()
            elif key in CONDITION_KEYS:
                attribute = key
            else:
                self.problem(
                    cond.line_of("key"),
                    f"{where}.key",
                    f"unknown key {shown(key)} (supported: request.headers[<name>], {', '.join(sorted(CONDITION_KEYS))})",
                )
                continue
            if "values" not in cond and "notValues" not in cond:
                self.problem(cond.line, where, "needs values or notValues")
                continue
            for name, negate in (("values", False), ("notValues", True)):
                if name in cond:
                    values = self.values(cond, name, attribute, f"{where}.{name}")
                    if values:
                        out.append(Constraint(attribute, values, negate, f"{key} {name}", header))
        return tuple(out)

    def values(self, m: LineDict, key: str, attribute: str, field: str) -> tuple[str, ...]:
        values = self.string_list(m, key, field)
        if values is None:
            return ()
        line = m.line_of(key)
        for i, v in enumerate(values):
            reason = value_problem(attribute, v)
            if reason:
                self.problem(line, f"{field}[{i}]", reason)
        return values

    def peer_authentication(
        self, spec: LineDict, name: str, namespace: str, line: int
    ) -> PeerAuthentication | None:
        self.unknown_keys(spec, frozenset({"selector", "mtls", "portLevelMtls"}), "spec")
        labels = self.match_labels(spec, "spec")
        mode = self.mtls(spec, "mtls", "spec.mtls")
        ports: dict[int, PeerMode] = {}
        if "portLevelMtls" in spec:
            plm = self.mapping(
                spec["portLevelMtls"], spec.line_of("portLevelMtls"), "spec.portLevelMtls"
            )
            if plm is not None:
                if not labels:
                    self.problem(
                        spec.line_of("portLevelMtls"),
                        "spec.portLevelMtls",
                        "needs a workload selector (Istio applies port-level mTLS only to selected workloads)",
                    )
                for port_text in plm:
                    where = f"spec.portLevelMtls.{shown_key(port_text)}"
                    port = port_number(port_text)
                    if port is None:
                        self.problem(
                            plm.line_of(port_text), where, "port must be a number from 1 to 65535"
                        )
                        continue
                    ports[port] = self.mtls(plm, port_text, where)
        return PeerAuthentication(name, namespace, labels, mode, ports, self.source, line)

    def mtls(self, parent: LineDict, key: str, field: str) -> PeerMode:
        m = self.mapping(parent.get(key), parent.line_of(key), field)
        if m is None:
            return "UNSET"
        self.unknown_keys(m, frozenset({"mode"}), field)
        mode = m.get("mode", "UNSET")
        if not isinstance(mode, str) or mode not in PEER_MODES:
            self.problem(
                m.line_of("mode"),
                f"{field}.mode",
                f"{shown(mode)} is not one of STRICT, PERMISSIVE, DISABLE, UNSET",
            )
            return "UNSET"
        return cast(PeerMode, mode)
