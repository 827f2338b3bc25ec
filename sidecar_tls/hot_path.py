"""Build the sidecar's compiled hot path: the modules in `sidecar_tls._compiled.HOT_PATH`, compiled
to C with mypyc into build/compiled/ (outside the source tree; nothing there shadows a source).

    python -m sidecar_tls.hot_path          # build when the sources changed (make compiled)
    python -m sidecar_tls.hot_path --check  # exit 1 when a build exists but is stale

A C compiler and the Python headers are needed (make system-deps); without them nothing needs
building: the sources run interpreted (lint and the fast tests never compile).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from sidecar_tls._compiled import (
    BUILD_DIR,
    DIGEST_FILE,
    PACKAGE_DIR,
    digest,
    recorded_digest,
    sources,
)

ROOT = PACKAGE_DIR.parent
RUNTIME = "sidecar_tls.hot_path"  # the group: mypyc names its shared runtime <group>__mypyc
_TEMP = ROOT / "build" / "mypyc-temp"


def stale() -> list[str]:
    """Why the build on disk does not match the sources (empty: current, or none built)."""
    recorded = recorded_digest()
    if not recorded:
        return []
    if recorded != digest():
        return [f"the compiled modules in {BUILD_DIR} were built from other sources than these"]
    return []


def is_compiled(module: object) -> bool:
    import importlib.machinery

    return str(getattr(module, "__file__", "")).endswith(
        tuple(importlib.machinery.EXTENSION_SUFFIXES)
    )


def build() -> None:
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        raise SystemExit(f"cannot compile the hot path: {headers} is missing (make system-deps)")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        raise SystemExit("cannot compile the hot path: no C compiler (make system-deps)")
    shutil.rmtree(BUILD_DIR, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-m", "sidecar_tls.hot_path", "--setup"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"mypyc failed to compile the hot path (exit {result.returncode})")
    DIGEST_FILE.write_text(digest() + "\n")


def _setup() -> None:
    """setuptools' build_ext of the mypyc extensions into BUILD_DIR (in a child: setup() exits)."""
    from mypyc.build import mypycify
    from setuptools import setup  # type: ignore[import-untyped]

    files = [str(p.relative_to(ROOT)) for p in sources()]
    setup(
        name="meshward-hot-path",
        # One group: calls between the modules stay native.
        ext_modules=mypycify(files, group_name=RUNTIME, target_dir=str(_TEMP)),
        script_args=["build_ext", "--build-lib", str(BUILD_DIR), "--build-temp", str(_TEMP)],
    )


def remove_in_tree_builds() -> list[Path]:
    """Compiled modules left in the source tree by the former in-place build: they would shadow
    their sources whatever the digest says."""
    stray = [p for p in PACKAGE_DIR.rglob("*") if p.suffix in (".so", ".pyd")]
    for path in stray:
        path.unlink()
    return stray


def main(argv: list[str]) -> int:
    if argv[1:] == ["--setup"]:
        _setup()
        return 0
    for path in remove_in_tree_builds():
        print(f"hot path: removed {path} (an in-place build shadowing its source)", file=sys.stderr)
    if argv[1:] == ["--check"]:
        problems = stale()
        for problem in problems:
            print(f"hot path: {problem}; run `make compiled`", file=sys.stderr)
        return 1 if problems else 0
    if recorded_digest() == digest():
        return 0
    print("compiling the data path's hot modules with mypyc (about a minute)", file=sys.stderr)
    build()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
