"""Start the real `autonomy-orchestrator serve` as a subprocess on a free loopback port.

    with ServeProcess(tmp_path / "data") as srv:
        requests.get(srv.url("/v1/health"))

Used by every end-to-end test. The process gets SIGTERM on exit; its stdout/stderr are kept in
files next to the data dir so a failing test can show them (`srv.logs()`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).with_name("autonomy-orchestrator")
START_TIMEOUT = 30.0


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a subprocess: this one's, less AUTONOMY_TEST_DATABASE (a child that
    inherited it would serve from, and migrate, the PostgreSQL admin database), plus EXTRA."""
    env = {k: v for k, v in os.environ.items() if k != "AUTONOMY_TEST_DATABASE"}
    return {**env, **(extra or {})}


def share_keys(source: Path, target: Path) -> None:
    """Give the replica whose data dir is TARGET the rollout signing key and session secret of
    SOURCE's (replicas of one database must share them: API.md §7)."""
    import shutil

    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    for key in ("rollout-signing.key", "django-secret.key"):
        shutil.copy2(source / key, target / key)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `autonomy-orchestrator ARGS` to completion."""
    return subprocess.run(
        [str(BIN), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(env),
        input=input,
    )


class ServeProcess:
    def __init__(
        self,
        data_dir: Path,
        *extra_args: str,
        port: int | None = None,
        scheme: str = "http",
        env: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        wait: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.scheme = scheme
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.ssl_context = ssl_context
        self.wait = wait
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_dir = self.data_dir.parent
        self.stdout_path = self.log_dir / f"serve-{self.port}.out"
        self.stderr_path = self.log_dir / f"serve-{self.port}.err"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def args(self) -> list[str]:
        return [
            str(BIN),
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]

    def start(self) -> ServeProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = child_env(self.env)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.args(), stdout=out, stderr=err, env=env)
        if self.wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"serve exited with {self.proc.returncode} before it was ready:\n{self.logs()}"
                )
            try:
                with urllib.request.urlopen(
                    self.url("/v1/health"), timeout=2, context=self.ssl_context
                ) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"serve not ready after {timeout}s ({last}):\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run_serve_expect_exit(
    data_dir: Path, *extra_args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Start serve expecting it to refuse to start; return the finished process."""
    return cli(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--data-dir",
        str(data_dir),
        *extra_args,
        env=env,
        timeout=timeout,
    )


def call(
    srv: ServeProcess, method: str, path: str, body: Any = None, timeout: float = 10
) -> tuple[int, dict[str, str], Any]:
    """METHOD PATH on SRV with a JSON BODY: (status, headers, decoded JSON answer; the text of an
    error answer that is not JSON)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(srv.url(path), data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, dict(resp.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        return err.code, dict(err.headers), body


def wait_until(
    predicate: Any, *, timeout: float = 20.0, what: str = "condition", step: float = 0.1
) -> Any:
    """Poll `predicate` until it returns something truthy (returned) or `timeout` seconds pass
    (AssertionError naming `what`): the end-to-end tests' wait on a condition with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
