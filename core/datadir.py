"""Preparing the data dir `serve` runs from: 0700, writable, with a stable secret key.

The data dir holds the store (session keys, tokens' hashes), the rollout signing key and the
session secret, so it is private to the server's user: created 0700, and tightened to 0700 (with
a warning) when it is more open. The SQLite database and its `-wal` / `-shm` files are 0600:
existing ones are tightened here, new ones are created under the process umask 077 that `serve`
and the store commands set (`private_umask`), and SQLite gives a new WAL/SHM file the mode of the
database file.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

SECRET_FILENAME = "django-secret.key"
PRIVATE_FILES = ("orchestrator.sqlite3", "orchestrator.sqlite3-wal", "orchestrator.sqlite3-shm")


class DataDirError(Exception):
    """The data dir cannot be created or written; the message is one readable line."""


def private_umask() -> None:
    """Files this process creates from now on are private (0600 / 0700)."""
    os.umask(0o077)


def prepare_data_dir(path: Path) -> list[str]:
    """Create or check PATH; returns warnings (one line each) about modes that were tightened."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"cannot create data dir {path}: {exc.strerror or exc}") from exc
    if not path.is_dir():
        raise DataDirError(f"data dir {path} exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(f"data dir {path} is not writable by this user")
    warnings = []
    for target, private in [(path, 0o700)] + [(path / name, 0o600) for name in PRIVATE_FILES]:
        try:
            info = target.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
            continue  # not ours to change; the open will say so if it matters
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            try:
                os.chmod(target, mode & 0o700)
            except OSError as exc:
                raise DataDirError(
                    f"cannot make {target} private (mode {mode:04o}): {exc.strerror or exc}"
                ) from exc
            warnings.append(
                f"{target} was mode {mode:04o}, readable by other users: tightened to {private:04o}"
            )
    return warnings


def prepare_workers_dir(data_dir: Path) -> Path:
    """`serve --workers N`: the workers' meeting place in the data dir (0700; core.workers)."""
    path = data_dir / "workers"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise DataDirError(f"cannot create {path}: {exc.strerror or exc}") from exc
    return path


def load_or_create_secret(path: Path) -> str:
    """The Django secret key kept in the data dir (0600), so admin logins survive restarts."""
    key_file = path / SECRET_FILENAME
    try:
        return key_file.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(50)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value
