"""YAML loading that remembers where each mapping and key came from.

Policy and registry files are refused with file, line and field; this loader gives every mapping
the line it starts on and the line of each of its keys, so validation code can point at the exact
place without a second parse.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from meshward_common.errors import ConfigError


class LineDict(dict[str, Any]):
    """A mapping from a YAML document, with `line` (1-based) and `key_lines` per key."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list[Any]):
    line: int = 0


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
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


def load_documents(text: str, source: str) -> list[Any]:
    """All documents of a (multi-document) YAML text; empty documents are dropped.

    A syntax error becomes a ConfigError naming `source` and the line.
    """
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError(f"{source}:{line}: YAML syntax error: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML error: {exc}") from exc
    return [d for d in docs if d is not None]


def load_file(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return load_documents(text, str(path))


def yaml_files(path: Path) -> Iterator[Path]:
    """A file itself, or the *.yaml / *.yml files of a directory in name order."""
    if path.is_dir():
        yield from sorted(
            p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
        )
    else:
        yield path
