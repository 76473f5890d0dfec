"""How the edge's token cache learns that a token was revoked in another process, so the revoked
token is refused on its very next request without a database read per request (API.md §6).

Two signals, either of which drops the whole cache (the next request of each token resolves it
again from the database):

* **The stamp file** `token-revocations.stamp` in the data dir (0600). `token revoke` (the CLI, or
  any process) rewrites it after its transaction committed, setting its mtime to a fresh
  nanosecond value; the edge `os.stat`s it on every request that presents a token (about a
  microsecond) and drops the cache when (mtime_ns, inode, size) changed. Works for both stores
  whenever the CLI and `serve` share the data dir (one host).
* **PostgreSQL NOTIFY** on channel `autonomy_token_revoked`, sent by the revoke inside its
  transaction (delivered on commit). A listener thread per server process holds a dedicated
  connection (`LISTEN`) and bumps `generation`, which the cache compares per request (an int).
  This reaches replicas on other hosts. While the listener has no connection, `degraded` is set
  and the cache falls back to its TTL (revocation then shows within `ttl` seconds).

Expiry needs no signal: the cache keeps each token's expiry and checks it on every use.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("orchestrator.auth")

STAMP_NAME = "token-revocations.stamp"
NOTIFY_CHANNEL = "autonomy_token_revoked"


def stamp_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / STAMP_NAME


def bump_stamp(data_dir: str | Path) -> None:
    """Tell every server sharing `data_dir` that a token was revoked (best effort: a failure is
    logged; the servers' TTL still applies)."""
    path = stamp_path(data_dir)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            now = time.time_ns()
            os.write(fd, str(now).encode())
        finally:
            os.close(fd)
        before = os.stat(path).st_mtime_ns
        stamp = max(now, before + 1)  # strictly new, even within one clock tick
        os.utime(path, ns=(stamp, stamp))
    except OSError:
        logger.warning("could not write the token revocation stamp %s", path, exc_info=True)


class RevocationWatch:
    """What the token cache asks before trusting an entry: `changed()` is True once after each
    revocation signal (stamp file or NOTIFY)."""

    def __init__(self, stamp: Path | None = None) -> None:
        self.stamp = stamp
        self.generation = 0  # bumped by the NOTIFY listener thread
        self.degraded = False  # a listener exists but has no connection: trust only the TTL
        self._seen_generation = 0
        self._seen_stamp = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        if self.stamp is None:
            return None
        try:
            st = os.stat(self.stamp)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino, st.st_size

    def changed(self) -> bool:
        generation = self.generation
        stamp = self._stat()
        if generation == self._seen_generation and stamp == self._seen_stamp:
            return False
        self._seen_generation = generation
        self._seen_stamp = stamp
        return True

    def notified(self) -> None:
        self.generation += 1


class NotifyListener:
    """`LISTEN autonomy_token_revoked` on a dedicated PostgreSQL connection (a daemon thread);
    every notification bumps `watch.generation`. Reconnects with a backoff; while disconnected
    `watch.degraded` is set (the cache then relies on its TTL), and on reconnect the cache is
    dropped once (a revocation may have been missed)."""

    def __init__(self, watch: RevocationWatch, connect_kwargs: dict[str, Any]) -> None:
        self.watch = watch
        self.connect_kwargs = connect_kwargs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="token-revocation-listener", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import psycopg

        backoff = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(**self.connect_kwargs, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.watch.degraded = False
                    self.watch.notified()  # anything revoked while we were away
                    self.connected.set()
                    backoff = 0.5
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.watch.notified()
            except Exception as exc:
                if self._stop.is_set():
                    return
                if not self.watch.degraded:
                    logger.warning(
                        "token revocation listener lost its database connection (%s); "
                        "revocations by other hosts show within the cache TTL until it is back",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc),
                    )
                self.watch.degraded = True
                self.connected.clear()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
