"""Slow and greedy clients over the real `serve`, loopback only, bounded in count and time
(issue 11, item 9): slowloris connections are closed after an absolute deadline (a byte now and
then does not extend it), connections per client address are capped, and an upload larger than
the limit is never spooled whole, on the Django path too."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.liveserver import ServeProcess

pytestmark = pytest.mark.e2e

TIMEOUT = 10


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def trickle(sock: socket.socket, stop: threading.Event, seconds: float) -> None:
    """One header byte every `seconds`: Twisted's idle timer alone would never fire."""
    for byte in b"X-Slow: " + b"a" * 1000:
        if stop.wait(seconds):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


def test_slowloris_connections_are_closed_and_the_server_keeps_answering(tmp_path):
    env = {"AUTONOMY_CLIENT_HEADER_TIMEOUT": "2", "AUTONOMY_MAX_CONNECTIONS_PER_CLIENT": "200"}
    with ServeProcess(tmp_path / "data", env=env) as srv:
        stop = threading.Event()
        slow = []
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.append(sock)
        threads = [threading.Thread(target=trickle, args=(s, stop, 0.5)) for s in slow]
        for thread in threads:
            thread.start()
        try:
            # the server answers others meanwhile
            health = requests.get(srv.url("/v1/health"), timeout=TIMEOUT)
            assert health.status_code == 200
            # each slow connection is closed (within a bound far below "a byte every 0.5 s
            # forever": the socket timeout is 10 s after the 2 s deadline)
            assert all(closed_by_server(sock) for sock in slow)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5)
            for sock in slow:
                sock.close()
        assert requests.get(srv.url("/v1/health"), timeout=TIMEOUT).status_code == 200
        logs = srv.logs()
    assert "closed slow or excess client connections (last from 127.0.0.1)" in logs
    assert "header timeout" in logs


def test_a_body_that_trickles_is_closed_after_the_body_deadline(tmp_path):
    env = {"AUTONOMY_CLIENT_BODY_TIMEOUT": "2"}
    with ServeProcess(tmp_path / "data", env=env) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        stop = threading.Event()
        thread = threading.Thread(target=trickle, args=(sock, stop, 0.5))
        thread.start()
        try:
            assert closed_by_server(sock)
        finally:
            stop.set()
            thread.join(timeout=5)
            sock.close()


def test_connections_per_client_address_are_capped(tmp_path):
    env = {"AUTONOMY_MAX_CONNECTIONS_PER_CLIENT": "5", "AUTONOMY_CLIENT_HEADER_TIMEOUT": "30"}
    with ServeProcess(tmp_path / "data", env=env) as srv:
        held = [
            socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) for _ in range(5)
        ]
        try:
            for sock in held:  # the server holds these open (no bytes sent, no deadline yet)
                sock.settimeout(0.5)
                assert not closed_by_server(sock)
            extra = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
            assert closed_by_server(extra)
            extra.close()
        finally:
            for sock in held:
                sock.close()
        # once they are gone, the client is served again
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                assert requests.get(srv.url("/v1/health"), timeout=TIMEOUT).status_code == 200
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _largest_open_temp_file(pid: int) -> int:
    largest = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
            if target.startswith("/") and not target.startswith(("/dev", "/proc")):
                largest = max(largest, os.stat(fd).st_size)
        except OSError:
            continue
    return largest


@pytest.mark.parametrize("accept", ["application/json", "text/html"])  # fast path, Django path
def test_a_huge_chunked_upload_is_never_spooled_past_the_limit(tmp_path, accept):
    limit = 200_000
    env = {"AUTONOMY_MAX_BODY_BYTES": str(limit)}
    with ServeProcess(tmp_path / "data", env=env) as srv:
        assert srv.proc is not None
        pid = srv.proc.pid
        store = srv.data_dir / "orchestrator.sqlite3"
        watched = {"largest": 0}

        def body():  # 40 MB in chunks, no Content-Length: chunked transfer encoding
            chunk = b"x" * 65536
            yield b'{"events": ["'
            for _ in range(640):
                largest = _largest_open_temp_file(pid) - store.stat().st_size
                watched["largest"] = max(watched["largest"], largest)
                yield chunk
            yield b'"]}'

        answer = requests.post(
            srv.url("/v1/events"),
            data=body(),
            headers={"Content-Type": "application/json", "Accept": accept},
            timeout=60,
        )
        assert answer.status_code == 413
        assert answer.json()["limit"] == limit
    assert watched["largest"] < 2 * limit  # 40 MB sent, the server kept about the limit
