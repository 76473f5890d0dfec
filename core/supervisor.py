"""`serve --workers N`: start the serving processes, keep them running, stop them together.

The `serve` process sets everything up (flags, data dir, migrations, listening sockets) and
then, with N > 1, replaces itself (`exec_supervisor`: same pid, a fresh interpreter) with this
module's small supervisor: ~16 MiB instead of the ~95 MiB heap of a process that loaded Django
and ran the migrations, so the server's memory is the workers' own. The supervisor starts each
worker as a new `serve` process (fork, then exec of `python -m orchestrator_site serve`) that
finds its listening sockets and flags in `WORKER_ENV` (`worker_spec`) and skips what `serve`
already did; it starts a worker again when it exits while `serve` is not stopping (a crash,
`kill -9`), and forwards SIGTERM/SIGINT to every worker, then waits for them to drain and exit.
It starts no thread and no event loop, so forking again later is safe. Each worker asks the
kernel for SIGTERM when the supervisor dies (even by `kill -9`), so no worker outlives its
`serve`. A worker that keeps dying within RAPID_EXIT_SECONDS of its start RAPID_EXITS times in a
row stops the whole serve (exit status 1) instead of looping. Workers run with glibc's
`MALLOC_ARENA_MAX=2` unless the environment sets it: a serving process's threads then share two
malloc arenas instead of up to sixteen, each keeping its own free memory.

Imports nothing of this repository but `core.logging_setup` (for the supervisor's own lines).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

logger = logging.getLogger("orchestrator.serve")

RAPID_EXIT_SECONDS = 5.0
RAPID_EXITS = 5
RESTART_DELAY_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: a killed supervisor leaves workers running
        logger.debug("prctl(PR_SET_PDEATHSIG) unavailable", exc_info=True)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = str(os.WTERMSIG(status))
        return f"killed by {name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def supervise(count: int, run: Callable[[int], int]) -> int:
    """Run `count` workers until SIGTERM/SIGINT; the serve's exit status."""
    parent = os.getpid()
    children: dict[int, int] = {}  # pid -> worker index
    started: dict[int, float] = {}  # worker index -> monotonic start
    rapid: dict[int, int] = {}  # worker index -> rapid exits in a row
    stopping = False
    failed = False

    def forward(signum: int) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        forward(signum)

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _die_with_parent()
                if os.getppid() != parent:  # the supervisor died before prctl took effect
                    os._exit(1)
                code = run(index)
            except BaseException:
                logger.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = index
        started[index] = time.monotonic()

    previous = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        for index in range(count):
            spawn(index)
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in children:
                continue
            index = children.pop(pid)
            if stopping:
                if status != 0:
                    logger.warning("worker %d stopped: %s", index, _describe(status))
                continue
            lived = time.monotonic() - started[index]
            rapid[index] = rapid.get(index, 0) + 1 if lived < RAPID_EXIT_SECONDS else 0
            if rapid[index] >= RAPID_EXITS:
                logger.error(
                    "worker %d exited %d times within %gs of starting (%s); stopping serve",
                    index,
                    rapid[index],
                    RAPID_EXIT_SECONDS,
                    _describe(status),
                )
                failed = stopping = True
                forward(signal.SIGTERM)
                continue
            logger.warning(
                "worker %d exited unexpectedly (%s); starting it again", index, _describe(status)
            )
            time.sleep(RESTART_DELAY_SECONDS)
            if not stopping:
                spawn(index)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 1 if failed else 0


SUPERVISOR_ENV = "AUTONOMY_SERVE_SUPERVISOR"
WORKER_ENV = "AUTONOMY_SERVE_WORKER"
_ROOT = Path(__file__).resolve().parent.parent


def _environment(**extra: str) -> dict[str, str]:
    """This process's environment for a supervisor or worker: no spec meant for another process,
    and, run from a source tree (`python manage.py serve` from any directory), that tree on
    PYTHONPATH. An installed package is importable already: its site-packages directory is never
    put ahead of the standard library."""
    env = {k: v for k, v in os.environ.items() if k not in (SUPERVISOR_ENV, WORKER_ENV)}
    if (_ROOT / "manage.py").is_file():
        paths = [str(_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra)
    return env


def exec_supervisor(
    *,
    count: int,
    sockets: list[list[int]],
    directory: str,
    options: dict[str, Any],
    log_format: str,
    log_level: str,
) -> NoReturn:
    """Replace this process with the supervisor of `count` workers; never returns.

    `sockets[i]` are the listening sockets (file descriptors) of worker i, its own first;
    `options` are the serve's parsed flags, handed to every worker as they are."""
    for fds in sockets:
        for fd in fds:
            os.set_inheritable(fd, True)
    spec = {
        "count": count,
        "sockets": sockets,
        "directory": directory,
        "options": options,
        "log_format": log_format,
        "log_level": log_level,
    }
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-m", "core.supervisor"]
    os.execve(sys.executable, argv, _environment(**{SUPERVISOR_ENV: json.dumps(spec)}))


def worker_spec() -> dict[str, Any] | None:
    """In a worker started by the supervisor: its index, count, sockets, shared directory and
    the serve's flags (removed from the environment once read); elsewhere None."""
    raw = os.environ.pop(WORKER_ENV, None)
    return None if raw is None else dict(json.loads(raw))


def main() -> int:
    """`python -m core.supervisor`, exec'd by `serve --workers N` (`exec_supervisor`)."""
    from core.logging_setup import configure_logging

    spec = json.loads(os.environ[SUPERVISOR_ENV])
    configure_logging(spec["log_format"], spec["log_level"])
    sockets: list[list[int]] = spec["sockets"]
    mine_by_index = [set(fds) for fds in sockets]
    every_fd = set().union(*mine_by_index)

    def run(index: int) -> int:
        for fd in every_fd - mine_by_index[index]:
            os.set_inheritable(fd, False)  # another worker's socket: not in this one
        worker = {
            "index": index,
            "count": spec["count"],
            "sockets": sockets[index],
            "directory": spec["directory"],
            "options": spec["options"],
        }
        env = _environment(**{WORKER_ENV: json.dumps(worker)})
        env.setdefault("MALLOC_ARENA_MAX", "2")
        argv = [sys.executable, "-m", "orchestrator_site", "serve"]
        os.execve(sys.executable, argv, env)
        return 1  # not reached: execve returns only by raising

    code = supervise(int(spec["count"]), run)
    if code:
        logging.getLogger("orchestrator.serve").error(
            "serve stopped: a worker kept failing at start; see the lines above"
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
