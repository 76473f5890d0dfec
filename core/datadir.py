"""Preparing the data dir `serve` runs from: created 0700, writable, with a stable secret key."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_FILENAME = "django-secret.key"


class DataDirError(Exception):
    """The data dir cannot be created or written; the message is one readable line."""


def prepare_data_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"cannot create data dir {path}: {exc.strerror or exc}") from exc
    if not path.is_dir():
        raise DataDirError(f"data dir {path} exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(f"data dir {path} is not writable by this user")
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
