"""YAML loading that remembers where each mapping and key came from, at a bounded cost.

Policy and registry files are refused with file, line and field; this loader gives every mapping
the line it starts on and the line of each of its keys, so validation code can point at the exact
place without a second parse.

The files come from operators and, through the policy directory, from whoever may write there, so
what one may cost is bounded before anything is built from it (`Limits`): its size, its nesting
depth and its node count *after alias expansion* (a 750-byte "billion laughs" file of nested
aliases stands for 10^9 nodes: built, it is one shared object graph, but every walk of it, and
every message that formats a value from it, is exponential). A first pass over libyaml's events
(linear, no recursion) measures depth and expanded size; only a file within the bounds is composed
and constructed. Every problem is one `YamlError`: `source:line: yaml: reason`, line >= 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshward_common.errors import ConfigError

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it


@dataclass(frozen=True)
class Limits:
    """What one YAML file may cost; every refusal names the bound it hit."""

    max_bytes: int
    max_nodes: int  # scalars, lists and mappings, counting each alias as all it stands for
    max_depth: int  # lists and mappings inside each other
    what: str = "YAML files"  # named in messages: "the limit for policy files"


DEFAULT_LIMITS = Limits(max_bytes=1 << 20, max_nodes=100_000, max_depth=64)
SHOWN_CHARS = 40  # of a value quoted in a message


class FieldError(ConfigError):
    """One problem of a file, in one line: `source:line: field: reason` (line >= 1)."""

    def __init__(self, source: str, line: int, field: str, reason: str) -> None:
        self.source, self.line, self.field, self.reason = source, max(line, 1), field, reason
        super().__init__(f"{self.source}:{self.line}: {field}: {reason}")


class YamlError(FieldError):
    """A file that is not YAML we will read (syntax, encoding, size, depth, aliases, tags)."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(source, line, "yaml", reason)


def shown(value: Any) -> str:
    """`repr(value)` cut to a few dozen characters: a message never carries a whole value."""
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "a mapping"
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[: SHOWN_CHARS - 5]}...{text[-2:]}"


def shown_key(key: str) -> str:
    """A mapping key as part of a field name in a message, cut like `shown`."""
    return key if len(key) <= SHOWN_CHARS and key.isprintable() else shown(key)


class LineDict(dict[str, Any]):
    """A mapping from a YAML document, with `line` (1-based) and `key_lines` per key."""

    line: int = 1
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list[Any]):
    line: int = 1


@dataclass(frozen=True)
class Document:
    value: Any  # LineDict, LineList or a scalar
    line: int  # where the document's content starts (>= 1)


class _Loader(_Base):  # type: ignore[misc]
    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:
            # Its failures on explicit tags are plain exceptions: `!!int a` a ValueError, `!!int`
            # with nothing an IndexError, `!!timestamp x` an AttributeError.
            raise yaml.constructor.ConstructorError(
                None, None, f"{_tag(node.tag)} cannot hold {shown(node.value)}", node.start_mark
            ) from exc


def _tag(tag: str) -> str:
    return (
        "!!" + tag.removeprefix("tag:yaml.org,2002:")
        if tag.startswith("tag:yaml.org,2002:")
        else shown(tag)
    )


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "a key must be a plain value, not a list or mapping",
                key_node.start_mark,
            )
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {shown(key)}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)

_OPEN = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSE = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


def _check_cost(text: str, source: str, limits: Limits) -> None:
    """Depth and expanded node count from the event stream, before any node is built."""
    if len(text) > limits.max_bytes:
        raise YamlError(
            source, 1, f"larger than {limits.max_bytes} bytes (the limit for {limits.what})"
        )
    nodes = 0
    sizes: dict[str, int] = {}  # anchor -> nodes it stands for
    open_: list[tuple[str | None, int]] = []  # per open collection: its anchor, nodes before it
    for event in yaml.parse(text, Loader=_Base):
        if isinstance(event, yaml.DocumentStartEvent):
            sizes.clear()  # anchors are per document
            continue
        if isinstance(event, _OPEN):
            if len(open_) >= limits.max_depth:
                raise YamlError(
                    source,
                    _event_line(event),
                    f"nested deeper than {limits.max_depth} levels (the limit for {limits.what})",
                )
            open_.append((event.anchor, nodes))
            nodes += 1
        elif isinstance(event, _CLOSE):
            anchor, before = open_.pop()
            if anchor is not None:
                sizes[anchor] = nodes - before
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            nodes += sizes.get(event.anchor or "", 1)  # an undefined alias: the composer's error
        else:
            continue
        if nodes > limits.max_nodes:
            raise YamlError(
                source,
                _event_line(event),
                f"more than {limits.max_nodes} values once aliases are expanded "
                f"(the limit for {limits.what})",
            )


def _event_line(event: yaml.Event) -> int:
    return event.start_mark.line + 1 if event.start_mark is not None else 1


def _line_of(exc: yaml.YAMLError, text: str) -> int:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return int(mark.line) + 1
    position = getattr(exc, "position", None)  # ReaderError: a character YAML does not allow
    return text.count("\n", 0, position) + 1 if isinstance(position, int) else 1


def _reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.constructor.ConstructorError):  # our refusals of values, tags, keys
        return str(exc.problem or "a value YAML cannot build")
    if isinstance(exc, yaml.MarkedYAMLError):
        return f"YAML syntax error: {exc.problem or exc.context or 'not valid YAML'}"
    if isinstance(exc, yaml.reader.ReaderError):
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        return f"character {char!r} is not allowed in YAML"
    return str(exc).splitlines()[0] if str(exc) else "not valid YAML"


def load_documents(text: str, source: str, limits: Limits = DEFAULT_LIMITS) -> list[Document]:
    """The documents of a (multi-document) YAML text, empty ones dropped; YamlError otherwise."""
    try:
        _check_cost(text, source, limits)
        loader = _Loader(text)
        try:
            docs = []
            while loader.check_node():
                node = loader.get_node()
                value = loader.construct_document(node)
                if value is not None:
                    docs.append(Document(value, node.start_mark.line + 1))
            return docs
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise YamlError(source, _line_of(exc, text), _reason(exc)) from exc
    except RecursionError as exc:  # not reachable within max_depth; a guard all the same
        raise YamlError(source, 1, f"nested too deep (the limit for {limits.what})") from exc


def read_text(path: Path, limits: Limits = DEFAULT_LIMITS) -> str:
    """A file's text, read no further than the size bound; YamlError (line 1 or the line of a
    bad byte) for what cannot be read, is too large or is not UTF-8."""
    try:
        with path.open("rb") as fh:
            data = fh.read(limits.max_bytes + 1)
    except OSError as exc:
        raise YamlError(str(path), 1, f"cannot read: {exc.strerror or exc}") from exc
    if len(data) > limits.max_bytes:
        raise YamlError(
            str(path), 1, f"larger than {limits.max_bytes} bytes (the limit for {limits.what})"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlError(str(path), line, "not UTF-8 text") from exc


def load_file(path: Path, limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    """The documents' values of a small YAML file (configuration); YamlError otherwise."""
    return [doc.value for doc in load_documents(read_text(path, limits), str(path), limits)]


def yaml_files(path: Path) -> Iterator[Path]:
    """A file itself, or the *.yaml / *.yml files of a directory in name order."""
    if path.is_dir():
        yield from sorted(
            p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
        )
    else:
        yield path
