"""The local stack's data directory: owner-only, with the API token in it.

Everything the stack keeps (the SQLite store, pod logs, Envoy's bootstrap, log and
admin socket, the control plane's xDS socket, the API token) lives under one directory
that only its owner may enter (0700), so other users of the machine can reach none of
it. The API token is a fresh random secret for each run of the stack, in a file only
the owner can read (0600); the CLI reads it from there and sends it as
`Authorization: Bearer <token>` on every call that changes state.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_FILE = "api.token"
DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_SOCKET_PATH = 107
"""A unix socket's path fits in 108 bytes, its terminating NUL included."""


class DataDirError(OSError):
    """The data directory cannot hold what the stack keeps there; one line."""


def socket_path(data_dir: str | os.PathLike[str], name: str) -> Path:
    """The absolute path of unix socket `name` in the data dir; DataDirError if the
    kernel would refuse a path that long."""
    path = Path(data_dir).absolute() / name
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise DataDirError(
            f"--data-dir {data_dir}: the socket path {path} is longer than "
            f"{MAX_SOCKET_PATH} bytes; use a shorter data directory"
        )
    return path


def prepare(data_dir: str | os.PathLike[str]) -> Path:
    """Create `data_dir` owner-only, or take group and other access away from it."""
    path = Path(data_dir)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != DIR_MODE:
        os.chmod(path, DIR_MODE)
        log.warning("data dir %s was mode %03o; made it %03o", path, mode, DIR_MODE)
    return path


def write_owner_only(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, replacing any file there."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_token(data_dir: str | os.PathLike[str]) -> str:
    """A fresh API token, written to `<data_dir>/api.token` (0600)."""
    token = secrets.token_urlsafe(32)
    write_owner_only(Path(data_dir) / TOKEN_FILE, token + "\n")
    return token


def token_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / TOKEN_FILE


def read_token(data_dir: str | os.PathLike[str]) -> str | None:
    """The running stack's API token, or None when there is no readable token file."""
    try:
        return token_path(data_dir).read_text().strip() or None
    except OSError:
        return None
