"""Policy files and directories into a PolicySet, keeping the good files and reporting the bad.

A file with any problem contributes nothing (its problems are reported with file and line); the
other files still load. Callers decide what a problem means: `authz lint` prints them, `authz
check` refuses to decide, the control plane keeps the last good version of that file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from meshward_common.errors import ConfigError
from meshward_common.yaml_lines import yaml_files
from policy.model import Resource, first_of_each
from policy.parse import PolicyFileError, Problem, parse_text, read_policy_text


@dataclass
class Loaded:
    resources: list[Resource] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: int = 0


def load_paths(paths: Iterable[Path]) -> Loaded:
    """Every policy in the given files and directories (*.yaml / *.yml, not recursive)."""
    out = Loaded()
    for path in paths:
        if not path.exists():
            out.problems.append(Problem(str(path), 1, "path", "no such file or directory"))
            continue
        try:
            files = list(yaml_files(path))
        except OSError as exc:
            out.problems.append(Problem(str(path), 1, "path", f"cannot list: {exc.strerror}"))
            continue
        for file in files:
            out.files += 1
            try:
                out.resources.extend(parse_text(read_policy_text(file), str(file)))
            except PolicyFileError as exc:
                out.problems.extend(exc.problems)
    out.resources, repeats = first_of_each(out.resources)
    for repeat, first in repeats:
        out.problems.append(
            Problem(
                repeat.source,
                repeat.line,
                "metadata.name",
                f"{repeat.kind} {repeat.key} is already defined at {first.source}:{first.line}",
            )
        )
    return out


def load_strict(paths: Iterable[Path]) -> list[Resource]:
    """Every policy in the paths, or ConfigError naming every problem."""
    loaded = load_paths(paths)
    if loaded.problems:
        raise PolicyFileError(loaded.problems)
    return loaded.resources


__all__ = ["ConfigError", "Loaded", "load_paths", "load_strict"]
