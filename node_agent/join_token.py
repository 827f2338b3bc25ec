"""The one-time join token, read from a private file or from stdin — never from the command line.

A token in argv is in `/proc/<pid>/cmdline`, which every local user can read: whoever redeems it
first gets the node's SVID. So the token comes from a file that only the agent's user can read
(checked on the opened descriptor, so a file swapped in after the check is not read), or from
stdin (`--join-token-file -`), e.g. piped from `meshward ca join-token`.
"""

from __future__ import annotations

import os
import stat
from typing import TextIO

from meshward_common.errors import ConfigError

STDIN = "-"
# A token is 43 characters (token_urlsafe(32)); anything much longer is not a token file.
MAX_TOKEN_FILE_BYTES = 4096
OPTION = "--join-token-file"


def read_join_token(source: str, stdin: TextIO) -> str:
    """The token in file `source` (or stdin for "-"); ConfigError in one line otherwise."""
    if source == STDIN:
        text = stdin.readline(MAX_TOKEN_FILE_BYTES)
        where = f"{OPTION} - (stdin)"
    else:
        text = _read_private_file(source)
        where = f"{OPTION} {source}"
    token = text.strip()
    if not token:
        raise ConfigError(f"{where}: no token in it")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError(
            f"{where}: not a join token (one line, as `meshward ca join-token` prints)"
        )
    return token


def _read_private_file(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"{OPTION} {path}: cannot read: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        problem = private_file_problem(st, os.geteuid())
        if problem:
            raise ConfigError(f"{OPTION} {path}: {problem}")
        data = os.read(fd, MAX_TOKEN_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ConfigError(f"{OPTION} {path}: longer than {MAX_TOKEN_FILE_BYTES} bytes")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{OPTION} {path}: not a join token (not ASCII text)") from exc


def private_file_problem(st: os.stat_result, uid: int) -> str:
    """Why a file with this status may not hold a secret of user `uid`, or "" if it may."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != uid:
        return f"owned by uid {st.st_uid}, not by this agent's user (uid {uid})"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (
            f"mode {mode:04o} lets other users read or change it; "
            f"`chmod 600` it (or pass the token on stdin: {OPTION} -)"
        )
    return ""


def how_to_bootstrap(node: str) -> str:
    """What an operator runs to give node `node` a token (used by every message that asks)."""
    return (
        f"`meshward ca join-token --node {node} --out FILE` on the control plane, then "
        f"{OPTION} FILE (mode 0600), or pipe the token in with {OPTION} -"
    )
