"""Where the sidecar's hot path runs from: its compiled modules when they are built and current,
else its sources.

`python -m sidecar_tls.hot_path` (make compiled) compiles the per-request modules in HOT_PATH with
mypyc into build/compiled/, outside the source tree, as black and mypy ship compiled wheels beside
their pure-Python sources. The packages that hold those modules put that directory first on their
`__path__` (`extend_path`), so their compiled modules are imported instead of the sources, but only
when the build's recorded digest matches the sources on disk (a build from other sources would
run stale code) and the one switch, MESHWARD_INTERPRETED=1, is not set. Otherwise the same
sources run interpreted; `make test` runs the sidecar's tests both ways.

The HTTP/2 libraries the codec drives (h2, its HPACK and framing: LIBRARIES) are pure Python; the
same build compiles their installed, pinned sources unchanged with Cython into
build/compiled/libraries/, and `put_libraries_first` puts that directory first on `sys.path` under
the same two conditions (the digest of the installed sources, the switch). Their behaviour is the
library's own: Cython compiles Python semantics, annotations are not turned into C types.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from functools import cache
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

SWITCH: Final = "MESHWARD_INTERPRETED"  # "1": run the sources even when compiled modules exist
PACKAGE_DIR: Final = Path(__file__).resolve().parent
BUILD_DIR: Final = PACKAGE_DIR.parent / "build" / "compiled"
DIGEST_FILE: Final = BUILD_DIR / "hot_path.sha256"
LIBRARIES_DIR: Final = BUILD_DIR / "libraries"
LIBRARIES_DIGEST_FILE: Final = BUILD_DIR / "libraries.sha256"

# The modules every request runs through twice (outbound, then inbound sidecar), paths below
# the package, chosen by `python -m bench sidecar` in one session (CPU per request per sidecar,
# wrk, telemetry on): all interpreted ~193 us, the HTTP/1.1 codec and the proxy compiled ~165 us,
# with telemetry as well ~148 us. xfcc (one format per connection) gains nothing compiled.
# The HTTP/2 codec, by `python -m bench grpc`'s sidecars in one session (CPU per unary call per
# sidecar, outbound + inbound): interpreted ~700 + 740 us, compiled ~530 + 570 us.
HOT_PATH: Final = (
    "exchange",
    "http1/body",
    "http1/head",
    "http1/relay",
    "http1/upstream",
    "http2/connection",
    "http2/deadlines",
    "http2/headers",
    "http2/streams",
    "http2/upstreams",
    "proxy/inbound",
    "proxy/outbound",
    "proxy/pool",
    "telemetry/metrics",
    "telemetry/observe",
    "telemetry/sampling",
    "telemetry/tracing",
)


def sources(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    return [package_dir / f"{name}.py" for name in HOT_PATH]


def digest(package_dir: Path = PACKAGE_DIR) -> str:
    h = hashlib.sha256()
    for path in sources(package_dir):
        name = str(path.relative_to(package_dir))
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def recorded_digest(digest_file: Path = DIGEST_FILE) -> str:
    try:
        return digest_file.read_text().strip()
    except OSError:
        return ""


@cache
def use_compiled() -> bool:
    """Whether this process imports the compiled modules (decided once per process)."""
    if os.environ.get(SWITCH) == "1":
        return False
    recorded = recorded_digest()
    if not recorded:
        return False  # never built: the sources run, as intended without a C compiler
    if recorded != digest():
        log.warning(
            "the compiled hot path in %s was built from other sources: running the sources "
            "interpreted (make compiled rebuilds it)",
            BUILD_DIR,
        )
        return False
    return True


def extend_path(path: list[str], package: str) -> list[str]:
    """`package`'s `__path__`, with its compiled modules' directory first when they are used."""
    if not use_compiled():
        return path
    return [str(BUILD_DIR.joinpath(*package.split("."))), *path]


# The pure-Python libraries under the HTTP/2 codec, and their modules that are compiled: the ones
# every frame runs through. The rest are copied as they are: package markers, enums and exception
# classes (nothing to gain), the Huffman encoder the sidecar does not use (headers.Encoder), and
# the Huffman decoding table (a C compiler takes over ten minutes and gigabytes for it). Each
# compiled module costs RSS (its code pages). By `python -m bench grpc` in one session, with the
# codec compiled (CPU per unary call per sidecar): libraries interpreted ~530 + 570 us, compiled
# ~480 + 510 us.
LIBRARIES: Final = ("h2", "hpack", "hyperframe")
LIBRARY_MODULES: Final = (
    "h2/config",
    "h2/connection",
    "h2/events",
    "h2/frame_buffer",
    "h2/settings",
    "h2/stream",
    "h2/utilities",
    "h2/windows",
    "hpack/hpack",
    "hpack/struct",
    "hpack/table",
    "hyperframe/flags",
    "hyperframe/frame",
)


def library_root() -> Path:
    """Where the installed LIBRARIES are (site-packages): looked up on `sys.path` without the
    compiled copies' directory, and without importing them (nor importlib.metadata: megabytes)."""
    from importlib.machinery import PathFinder

    path = [p for p in sys.path if p != str(LIBRARIES_DIR)]
    spec = PathFinder.find_spec(LIBRARIES[0], path)
    if spec is None or spec.origin is None:
        raise ImportError(f"{LIBRARIES[0]} is not installed")
    return Path(spec.origin).resolve().parent.parent


def library_sources(root: Path) -> list[Path]:
    return sorted(p for name in LIBRARIES for p in (root / name).rglob("*.py"))


def library_digest(root: Path) -> str:
    """The installed sources of LIBRARIES and the list of compiled modules, hashed."""
    h = hashlib.sha256("\n".join(LIBRARY_MODULES).encode() + b"\0")
    for path in library_sources(root):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def recorded_library_digest() -> str:
    return recorded_digest(LIBRARIES_DIGEST_FILE)


@cache
def use_compiled_libraries() -> bool:
    """Whether this process imports the compiled LIBRARIES (decided once per process)."""
    if os.environ.get(SWITCH) == "1":
        return False
    recorded = recorded_library_digest()
    if not recorded:
        return False
    try:
        current = library_digest(library_root())
    except (ImportError, OSError):
        return False
    if recorded != current:
        log.warning(
            "the compiled HTTP/2 libraries in %s were built from other sources than the installed "
            "ones: running those interpreted (make compiled rebuilds them)",
            LIBRARIES_DIR,
        )
        return False
    return True


def put_libraries_first() -> None:
    """Put the compiled LIBRARIES first on `sys.path` when they are used. A process that already
    imported one of them keeps what it has (a package is not swapped halfway)."""
    if any(name in sys.modules for name in LIBRARIES) or not use_compiled_libraries():
        return
    if str(LIBRARIES_DIR) not in sys.path:
        sys.path.insert(0, str(LIBRARIES_DIR))
