"""The data path's per-request modules, compiled to C with mypyc.

Every request runs through these modules twice (outbound, then inbound sidecar), so `make install`
compiles them in place, as black and mypy ship themselves: mypyc turns their type-annotated code into
C, with native attribute access and direct calls between compiled functions. Each module still runs
interpreted when not compiled (the same source, the same tests).

A compiled module shadows its source (Python prefers an extension module to a .py file of the same
name), so a compiled module built from older source would run stale code. The build records a
digest of the sources it compiled; `stale()` compares it with the sources on disk.

    python -m sidecar_tls.hot_path          # build when the sources changed (make install)
    python -m sidecar_tls.hot_path --check  # exit 1 when a compiled module is stale
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
DIGEST_FILE = ROOT / "build" / "hot_path.sha256"

# Per request: parse, relay, observe. Per-connection and control-plane code stays interpreted.
HOT_PATH = (
    "http1/body",
    "http1/head",
    "http1/relay",
    "proxy/inbound",
    "telemetry/metrics",
    "telemetry/observe",
    "proxy/outbound",
    "proxy/pool",
    "telemetry/sampling",
    "telemetry/tracing",
    "xfcc",
)


RUNTIME = "sidecar_tls.hot_path"  # mypyc's shared runtime: sidecar_tls/hot_path__mypyc.*.so


def sources() -> list[Path]:
    return [PACKAGE_DIR / f"{name}.py" for name in HOT_PATH]


def digest() -> str:
    h = hashlib.sha256()
    for path in sources():
        h.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def compiled_files() -> list[Path]:
    """The compiled module files on disk (any of the interpreter's extension suffixes)."""
    found = []
    for name in (*HOT_PATH, RUNTIME.rpartition(".")[2] + "__mypyc"):  # paths below the package
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = PACKAGE_DIR / f"{name}{suffix}"
            if path.exists():
                found.append(path)
    return found


def stale() -> list[str]:
    """Why the compiled modules on disk do not match the sources (empty: current, or none built)."""
    if not compiled_files():
        return []
    recorded = DIGEST_FILE.read_text().strip() if DIGEST_FILE.exists() else ""
    if recorded != digest():
        return [f"compiled modules in {PACKAGE_DIR} were built from other sources than these"]
    missing = len(HOT_PATH) + 1 - len(compiled_files())
    return [f"{missing} hot-path module(s) not compiled"] if missing else []


def is_compiled(module: object) -> bool:
    return str(getattr(module, "__file__", "")).endswith(
        tuple(importlib.machinery.EXTENSION_SUFFIXES)
    )


def build() -> None:
    """Compile the hot path in place (C compiler and Python headers needed: make system-deps)."""
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        raise SystemExit(f"cannot compile the hot path: {headers} is missing (make system-deps)")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        raise SystemExit("cannot compile the hot path: no C compiler (make system-deps)")
    for path in compiled_files():
        path.unlink()
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
    DIGEST_FILE.parent.mkdir(exist_ok=True)
    DIGEST_FILE.write_text(digest() + "\n")


def _setup() -> None:
    """setuptools' build_ext --inplace of the mypyc extensions (run in a child: setup() exits)."""
    from mypyc.build import mypycify
    from setuptools import setup  # type: ignore[import-untyped]

    files = [str(p.relative_to(ROOT)) for p in sources()]
    setup(
        name="meshward-hot-path",
        # One group: calls between the modules stay native. Its shared runtime is named after a
        # module inside the package, not a top-level module (which an installed console script
        # could not import).
        ext_modules=mypycify(files, group_name=RUNTIME),
        script_args=["build_ext", "--inplace"],
    )


def main(argv: list[str]) -> int:
    if argv[1:] == ["--setup"]:
        _setup()
        return 0
    if argv[1:] == ["--check"]:
        problems = stale()
        for problem in problems:
            print(f"hot path: {problem}; run `make install`", file=sys.stderr)
        return 1 if problems else 0
    if compiled_files() and not stale():
        return 0
    print("compiling the data path's hot modules with mypyc (about a minute)", file=sys.stderr)
    build()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
