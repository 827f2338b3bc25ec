"""Build the sidecar's compiled hot path: the modules in `sidecar_tls._compiled.HOT_PATH`, compiled
to C with mypyc into build/compiled/ (outside the source tree; nothing there shadows a source), and
the installed HTTP/2 libraries' modules (`LIBRARY_MODULES`) compiled unchanged with Cython into
build/compiled/libraries/.

    python -m sidecar_tls.hot_path          # build when the sources changed (make compiled)
    python -m sidecar_tls.hot_path --check  # exit 1 when a build exists but is stale

A C compiler and the Python headers are needed (make system-deps); without them nothing needs
building: the sources run interpreted (lint and the fast tests never compile).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from sidecar_tls._compiled import (
    BUILD_DIR,
    DIGEST_FILE,
    LIBRARIES_DIGEST_FILE,
    LIBRARIES_DIR,
    LIBRARY_MODULES,
    PACKAGE_DIR,
    digest,
    library_digest,
    library_root,
    library_sources,
    recorded_digest,
    recorded_library_digest,
    sources,
)

ROOT = PACKAGE_DIR.parent
RUNTIME = "sidecar_tls.hot_path"  # the group: mypyc names its shared runtime <group>__mypyc
_TEMP = ROOT / "build" / "mypyc-temp"
_CYTHON_TEMP = ROOT / "build" / "cython-temp"


def stale() -> list[str]:
    """Why the build on disk does not match the sources (empty: current, or none built)."""
    problems = []
    recorded = recorded_digest()
    if recorded and recorded != digest():
        problems.append(
            f"the compiled modules in {BUILD_DIR} were built from other sources than these"
        )
    recorded = recorded_library_digest()
    if recorded and recorded != library_digest(library_root()):
        problems.append(
            f"the compiled libraries in {LIBRARIES_DIR} were built from other sources than the "
            "installed ones"
        )
    return problems


def is_compiled(module: object) -> bool:
    import importlib.machinery

    return str(getattr(module, "__file__", "")).endswith(
        tuple(importlib.machinery.EXTENSION_SUFFIXES)
    )


def _check_toolchain() -> None:
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        raise SystemExit(f"cannot compile the hot path: {headers} is missing (make system-deps)")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        raise SystemExit("cannot compile the hot path: no C compiler (make system-deps)")


def _run_setup(step: str, what: str) -> None:
    """One setuptools build in a child process (setup() exits)."""
    result = subprocess.run(
        [sys.executable, "-m", "sidecar_tls.hot_path", step],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"failed to compile {what} (exit {result.returncode})")


def build() -> None:
    """The sidecar's own modules with mypyc (everything mypyc writes is below BUILD_DIR/sidecar_tls)."""
    _check_toolchain()
    want = digest()  # of the sources compiled (not of whatever is on disk once mypyc is done)
    DIGEST_FILE.unlink(missing_ok=True)
    shutil.rmtree(BUILD_DIR / PACKAGE_DIR.name, ignore_errors=True)
    _run_setup("--setup", "the hot path with mypyc")
    DIGEST_FILE.write_text(want + "\n")


def build_libraries() -> None:
    """The installed LIBRARIES: their LIBRARY_MODULES compiled with Cython, the other modules
    copied beside them, into LIBRARIES_DIR."""
    _check_toolchain()
    root = library_root()
    want = library_digest(root)
    shutil.rmtree(LIBRARIES_DIR, ignore_errors=True)
    LIBRARIES_DIGEST_FILE.unlink(missing_ok=True)
    shutil.rmtree(_CYTHON_TEMP, ignore_errors=True)
    src = _CYTHON_TEMP / "src"
    for path in library_sources(root):
        target = src / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    _run_setup("--setup-libraries", "the HTTP/2 libraries with Cython")
    compiled = {f"{name}.py" for name in LIBRARY_MODULES}
    for path in library_sources(src):
        relative = str(path.relative_to(src))
        if relative not in compiled:
            (LIBRARIES_DIR / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, LIBRARIES_DIR / relative)
    LIBRARIES_DIGEST_FILE.write_text(want + "\n")


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


def _setup_libraries() -> None:
    """setuptools' build_ext of the Cython extensions from the copied sources into LIBRARIES_DIR."""
    from Cython.Build import cythonize
    from setuptools import setup

    src = _CYTHON_TEMP / "src"
    modules = [str(src / f"{name}.py") for name in LIBRARY_MODULES]
    setup(
        name="meshward-http2-libraries",
        # Python semantics unchanged: annotations stay annotations (no C types from them).
        ext_modules=cythonize(  # type: ignore[no-untyped-call]
            modules,
            language_level=3,
            compiler_directives={"annotation_typing": False},
            build_dir=str(_CYTHON_TEMP / "c"),
            quiet=True,
        ),
        script_args=[
            "build_ext",
            "--build-lib",
            str(LIBRARIES_DIR),
            "--build-temp",
            str(_CYTHON_TEMP / "o"),
            "--parallel",
            str(os.cpu_count() or 1),
        ],
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
    if argv[1:] == ["--setup-libraries"]:
        _setup_libraries()
        return 0
    for path in remove_in_tree_builds():
        print(f"hot path: removed {path} (an in-place build shadowing its source)", file=sys.stderr)
    if argv[1:] == ["--check"]:
        problems = stale()
        for problem in problems:
            print(f"hot path: {problem}; run `make compiled`", file=sys.stderr)
        return 1 if problems else 0
    if recorded_digest() != digest():
        print("compiling the data path's hot modules with mypyc (about a minute)", file=sys.stderr)
        build()
    if recorded_library_digest() != library_digest(library_root()):
        print("compiling the HTTP/2 libraries with Cython (about a minute)", file=sys.stderr)
        build_libraries()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
