"""RFC 6902 JSON Patch between two JSON documents, and its application (what the webhook answers,
and what `kube-inject` applies to the Pod, so both go through the same patch).

`diff` recurses into objects; a list that only grew gets one `add` per new item (`/spec/
containers/1`), any other changed list is replaced whole. Keys are escaped per RFC 6901
(`sidecar.istio.io/status` -> `sidecar.istio.io~1status`).
"""

from __future__ import annotations

import copy
from typing import Any

from meshward_common.errors import InvalidRequest

Op = dict[str, Any]


def escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def diff(old: Any, new: Any, path: str = "") -> list[Op]:
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[Op] = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{path}/{escape(key)}"})
        for key, value in new.items():
            child = f"{path}/{escape(key)}"
            if key not in old:
                ops.append({"op": "add", "path": child, "value": copy.deepcopy(value)})
            else:
                ops += diff(old[key], value, child)
        return ops
    if isinstance(old, list) and isinstance(new, list) and new[: len(old)] == old:
        return [
            {"op": "add", "path": f"{path}/{i}", "value": copy.deepcopy(new[i])}
            for i in range(len(old), len(new))
        ]
    if old == new and type(old) is type(new):
        return []
    return [{"op": "replace", "path": path, "value": copy.deepcopy(new)}]


def _parent(doc: Any, path: str) -> tuple[Any, str]:
    if not path.startswith("/"):
        raise InvalidRequest(f"JSON patch path {path!r} does not start with /")
    tokens = [unescape(t) for t in path[1:].split("/")]
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, list):
            node = node[int(token)]
        elif isinstance(node, dict) and token in node:
            node = node[token]
        else:
            raise InvalidRequest(f"JSON patch path {path!r}: {token!r} does not exist")
    return node, tokens[-1]


def apply(doc: Any, ops: list[Op]) -> Any:
    """`doc` with `ops` applied (add, remove, replace: what `diff` writes); `doc` is not changed."""
    out = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), str(op.get("path", ""))
        if path == "":
            if kind != "replace":
                raise InvalidRequest(f"JSON patch: {kind} of the whole document")
            out = copy.deepcopy(op["value"])
            continue
        parent, key = _parent(out, path)
        try:
            if isinstance(parent, list):
                index = len(parent) if key == "-" else int(key)
                if kind == "add":
                    parent.insert(index, copy.deepcopy(op["value"]))
                elif kind == "remove":
                    del parent[index]
                elif kind == "replace":
                    parent[index] = copy.deepcopy(op["value"])
                else:
                    raise InvalidRequest(f"JSON patch op {kind!r} is not supported")
            elif kind in ("add", "replace"):
                if kind == "replace" and key not in parent:
                    raise InvalidRequest(f"JSON patch: replace of missing {path!r}")
                parent[key] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[key]
            else:
                raise InvalidRequest(f"JSON patch op {kind!r} is not supported")
        except (IndexError, KeyError, ValueError, TypeError) as exc:
            raise InvalidRequest(f"JSON patch {kind} {path!r}: {exc}") from exc
    return out
