"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that records what it is sent.

    with Receiver() as rx:                      # rx.url("/ok")
        ...
        rx.wait_for(1)                          # the received requests, once there are 1
        assert rx.requests[0].verified(secret)

Paths choose the answer: `/ok` 200; `/fail<N>` 500 for the first N requests of each event, then
200; `/hang` never answers until `release()` (a dead endpoint); `/trickle` answers one byte of
its headers every 0.1 s for 5 s; anything else 404.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from notifications.signing import verify


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)

    def verified(self, secret: str) -> bool:
        return verify(secret, self.body, self.headers.get("X-Autonomy-Signature", ""))


class Receiver:
    def __init__(self, port: int = 0) -> None:
        self.requests: list[Received] = []
        self.hanging: list[Received] = []
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                item = Received(
                    self.path, dict(self.headers.items()), self.rfile.read(length), time.time()
                )
                receiver.handle(self, item)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, handler: BaseHTTPRequestHandler, item: Received) -> None:
        path = item.path
        event_id = item.headers.get("X-Autonomy-Event-Id", "")
        with self._lock:
            self._counts[path] = self._counts.get(path, 0) + 1
            seen = self._counts.get(f"{path} {event_id}", 0)
            self._counts[f"{path} {event_id}"] = seen + 1
        if path == "/trickle":
            try:
                handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(50):
                    handler.wfile.write(b"x")
                    handler.wfile.flush()
                    time.sleep(0.1)
                handler.wfile.write(b"\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass  # the sender hung up
            return
        if path == "/hang":
            with self._lock:
                self.hanging.append(item)
            self._release.wait(60)
            status = 200
        elif path.startswith("/fail"):
            status = 500 if seen < int(path[len("/fail") :]) else 200
        elif path == "/ok":
            status = 200
        else:
            status = 404
        if status == 200:
            with self._lock:
                self.requests.append(item)
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def url(self, path: str = "/ok") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def tries(self, path: str) -> int:
        with self._lock:
            return self._counts.get(path, 0)

    def wait_for(self, count: int, path: str | None = None, timeout: float = 15) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received(path)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(
            f"{len(self.received(path))} of {count} webhook requests to {path or 'any path'} "
            f"after {timeout}s"
        )

    def release(self) -> None:
        self._release.set()

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
