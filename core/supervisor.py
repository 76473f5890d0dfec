"""`serve --workers N`: fork the serving processes, keep them running, stop them together.

The `serve` process sets everything up (flags, data dir, migrations, listening sockets) and
then, with N > 1, becomes a small supervisor: it forks N workers (each runs `run(index)` and
exits with its return code), starts a worker again when it exits while `serve` is not stopping
(a crash, `kill -9`), and forwards SIGTERM/SIGINT to every worker, then waits for them to drain
and exit. It starts no thread and no event loop, so forking again later is safe. Each worker
asks the kernel for SIGTERM when the supervisor dies (even by `kill -9`), so no worker outlives
its `serve`. A worker that keeps dying within RAPID_EXIT_SECONDS of its start RAPID_EXITS times
in a row stops the whole serve (exit status 1) instead of looping. Before the first fork the
heap is frozen (`gc.freeze()`): the collector of a worker then never writes to the objects it
inherited, so their pages stay shared with the other workers instead of being copied into each
(Python's advice for fork without exec). Imports nothing of this repository.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import time
from collections.abc import Callable

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
        gc.collect()
        gc.freeze()  # inherited objects: never visited by a worker's collector, pages shared
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
