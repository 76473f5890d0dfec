"""What a client of `serve`'s plain-HTTP engine (`core/http1.py`) sees, over raw sockets against
the real server on loopback: keep-alive and pipelining, chunked bodies, `Expect: 100-continue`,
`HEAD`, the parser's refusals (a JSON error, then the connection is closed), the decoded path,
headers with `_` kept from the application, and a client that half-closes its side."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from tests.liveserver import ServeProcess

pytestmark = pytest.mark.e2e

TIMEOUT = 10
HEALTH = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with ServeProcess(tmp_path_factory.mktemp("http1") / "data") as srv:
        yield srv


@dataclass
class Response:
    version: bytes
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header's values joined by ", "
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Reader:
    """Reads the answers of one connection, one after the other, from a byte buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"the server closed the connection; unread: {self.buffer!r}")
        self.buffer += data

    def until(self, marker: bytes) -> bytes:
        """The bytes up to and including `marker`."""
        while (end := self.buffer.find(marker)) < 0:
            self._fill()
        end += len(marker)
        taken, self.buffer = self.buffer[:end], self.buffer[end:]
        return taken

    def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

    def peek(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        return self.buffer[:count]

    def head(self) -> tuple[bytes, int, dict[str, str]]:
        lines = self.until(b"\r\n\r\n")[:-4].split(b"\r\n")
        version, status, _reason = lines[0].split(b" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return version, int(status), headers

    def response(self, *, head_request: bool = False) -> Response:
        """One whole answer (a body by its Content-Length or chunked; none for a HEAD)."""
        version, status, headers = self.head()
        if head_request:
            body = b""
        elif "content-length" in headers:
            body = self.exactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.until(b"\r\n")[:-2].split(b";")[0], 16):
                parts.append(self.exactly(size))
                assert self.exactly(2) == b"\r\n"
            while self.until(b"\r\n") != b"\r\n":  # trailer fields
                pass
            body = b"".join(parts)
        else:
            body = self.rest()
        return Response(version, status, headers, body)

    def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        while True:
            try:
                self._fill()
            except (EOFError, ConnectionResetError):
                taken, self.buffer = self.buffer, b""
                return taken

    def closed(self) -> bool:
        """True when the server closed the connection with nothing more to read."""
        if self.buffer:
            return False
        try:
            return self.sock.recv(1024) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def connect(server: ServeProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(server: ServeProcess, request: bytes) -> Response:
    """REQUEST on a fresh connection: its answer."""
    with connect(server) as sock:
        sock.sendall(request)
        return Reader(sock).response()


def exchange_then_closed(server: ServeProcess, request: bytes) -> tuple[Response, bool]:
    """REQUEST on a fresh connection: its answer, and whether the server then closed (waits up
    to TIMEOUT when it does not)."""
    with connect(server) as sock:
        sock.sendall(request)
        reader = Reader(sock)
        answer = reader.response()
        return answer, reader.closed()


def health_answers(server: ServeProcess) -> bool:
    answer = exchange(server, HEALTH)
    return answer.status == 200


def event_body(event_id: str, node_id: str) -> bytes:
    event = {
        "event_id": event_id,
        "event_type": "t",
        "node_id": node_id,
        "timestamp": "2026-11-30T10:00:00Z",
    }
    return json.dumps({"events": [event]}).encode()


def stored_event_ids(server: ServeProcess, node_id: str) -> list[str]:
    request = f"GET /v1/events?node_id={node_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    answer = exchange(server, request)
    assert answer.status == 200, answer
    return [event["event_id"] for event in answer.json()["events"]]


def assert_served_headers(answer: Response) -> None:
    assert answer.status == 200, answer
    assert int(answer.headers["content-length"]) == len(answer.body) > 0
    assert answer.headers["server"] == "autonomy-orchestrator"
    date = parsedate_to_datetime(answer.headers["date"])
    assert answer.headers["date"].endswith(" GMT")
    assert abs(date.timestamp() - time.time()) < 60


# --- keep-alive and pipelining -----------------------------------------------------------------


def test_http11_keeps_the_connection_for_a_second_request(server: ServeProcess) -> None:
    with connect(server) as sock:
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(HEALTH)
            answer = reader.response()
            assert answer.version == b"HTTP/1.1"
            assert_served_headers(answer)
            assert answer.json()["status"] == "ok"
            assert "close" not in answer.headers.get("connection", "").lower()


def test_a_connection_stays_usable_after_answers_from_django(server: ServeProcess) -> None:
    # Found by the generated-client test: Django cancels its wait for a disconnect once it has
    # answered; that cancelled the connection's own future, so every later Django answer on the
    # connection failed and the connection hung.
    with connect(server) as sock:
        reader = Reader(sock)
        for release in ("rel-h1-a", "rel-h1-b"):
            body = json.dumps({"release_id": release}).encode()
            sock.sendall(
                b"POST /v1/releases HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            answer = reader.response()
            assert answer.status == 201, answer
            assert answer.json()["release_id"] == release
        sock.sendall(HEALTH)
        assert_served_headers(reader.response())


def test_http11_connection_close_is_honoured(server: ServeProcess) -> None:
    request = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answer, closed = exchange_then_closed(server, request)
    assert_served_headers(answer)
    assert answer.headers["connection"].lower() == "close"
    assert closed


def test_http10_without_keep_alive_is_answered_then_closed(server: ServeProcess) -> None:
    answer, closed = exchange_then_closed(
        server, b"GET /v1/health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    assert answer.version == b"HTTP/1.0"
    assert_served_headers(answer)
    assert answer.headers["connection"].lower() == "close"
    assert closed


def test_http10_with_keep_alive_stays_open_for_a_second_request(server: ServeProcess) -> None:
    request = b"GET /v1/health HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"
    with connect(server) as sock:
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(request)
            answer = reader.response()
            assert_served_headers(answer)
            assert "close" not in answer.headers.get("connection", "").lower()


def test_http10_keep_alive_answer_tells_the_client_it_persists(server: ServeProcess) -> None:
    # An HTTP/1.0 client keeps the connection only when the answer says `Connection: keep-alive`
    # (RFC 9112 §9.3 and appendix C.2.2; e.g. `ab -k`, http.client): without it the server holds
    # a connection the client has given up on.
    request = b"GET /v1/health HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(request)
        answer = Reader(sock).response()
    assert_served_headers(answer)
    assert answer.headers.get("connection", "").lower() == "keep-alive", answer.headers


def test_pipelined_requests_are_answered_in_order(server: ServeProcess) -> None:
    ids = ["pipe-first", "pipe-second", "pipe-third"]
    requests = b"".join(
        b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: %s\r\n\r\n" % i.encode()
        for i in ids
    )
    with connect(server) as sock:
        sock.sendall(requests)
        reader = Reader(sock)
        answers = [reader.response() for _ in ids]
    assert [a.status for a in answers] == [200, 200, 200]
    assert [a.headers["x-request-id"] for a in answers] == ids


# --- request bodies ----------------------------------------------------------------------------


def chunked_post(body: bytes) -> tuple[bytes, bytes]:
    """The head and the hand-written chunked body (an extension, upper-case hex, a trailer)."""
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    first, second = body[:10], body[10:]
    chunks = (
        b"%x;x=y\r\n%s\r\n" % (len(first), first)
        + b"%X\r\n%s\r\n" % (len(second), second)
        + b"0\r\nX-Trailer: done\r\n\r\n"
    )
    return head, chunks


@pytest.mark.parametrize("split", ["whole", "byte-by-byte"])
def test_a_chunked_body_with_extension_and_trailer_is_stored(
    server: ServeProcess, split: str
) -> None:
    node = f"chunked-{split}"
    head, chunks = chunked_post(event_body("e1", node))
    with connect(server) as sock:
        if split == "whole":
            sock.sendall(head + chunks)
        else:  # the parser meets every split: inside sizes, extensions, CRLFs, the trailer
            sock.sendall(head)
            for byte in chunks:
                sock.sendall(bytes([byte]))
        answer = Reader(sock).response()
    assert answer.status == 200, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"received": 1, "inserted": 1, "deduped": 0}
    assert stored_event_ids(server, node) == ["e1"]


def test_expect_100_continue_is_answered_before_the_body_is_sent(server: ServeProcess) -> None:
    body = event_body("e-continue", "continue-node")
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with connect(server) as sock:
        sock.sendall(head)
        reader = Reader(sock)
        assert reader.until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = reader.response()
    assert answer.status == 200, answer
    assert answer.json() == {"received": 1, "inserted": 1, "deduped": 0}
    assert stored_event_ids(server, "continue-node") == ["e-continue"]


def test_a_request_with_a_content_length_body_keeps_the_connection(server: ServeProcess) -> None:
    body = event_body("e-length", "length-node")
    post = (
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with connect(server) as sock:
        sock.sendall(post + HEALTH)  # the body ends exactly where the next request starts
        reader = Reader(sock)
        stored = reader.response()
        health = reader.response()
    assert stored.json() == {"received": 1, "inserted": 1, "deduped": 0}
    assert_served_headers(health)


# --- HEAD, the path, headers -------------------------------------------------------------------


def test_head_has_the_headers_and_no_body(server: ServeProcess) -> None:
    head = b"HEAD /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(head + HEALTH)
        reader = Reader(sock)
        headed = reader.response(head_request=True)
        # no body bytes: the next answer's status line follows the HEAD's headers at once
        assert reader.peek(len(b"HTTP/1.1 200 ")) == b"HTTP/1.1 200 "
        got = reader.response()
    assert headed.status == 200
    assert headed.headers["server"] == "autonomy-orchestrator"
    assert int(headed.headers["content-length"]) > 0
    assert_served_headers(got)


def test_a_percent_encoded_path_is_decoded(server: ServeProcess) -> None:
    answer = exchange(server, b"GET /v1/%68ealth HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.status == 200, answer
    assert answer.json()["status"] == "ok"


def test_a_header_name_with_an_underscore_is_not_seen_by_the_application(
    server: ServeProcess,
) -> None:
    # X-Request-ID is echoed when the application sees it; X_Request_ID must not pose as it.
    dashed = exchange(
        server, b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: seen-id\r\n\r\n"
    )
    assert dashed.headers["x-request-id"] == "seen-id"
    under = exchange(
        server, b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX_Request_ID: posed-id\r\n\r\n"
    )
    assert under.status == 200
    assert under.headers["x-request-id"] != "posed-id"


def test_a_client_that_half_closes_after_its_request_gets_the_whole_answer(
    server: ServeProcess,
) -> None:
    body = event_body("e-half", "half-node")
    post = (
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    for request in (HEALTH, post):
        with connect(server) as sock:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            reader = Reader(sock)
            answer = reader.response()
            assert answer.status == 200, (request, answer)
            assert int(answer.headers["content-length"]) == len(answer.body)
            assert reader.closed()
    assert answer.json() == {"received": 1, "inserted": 1, "deduped": 0}


# --- refusals ----------------------------------------------------------------------------------

POST = b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"

REFUSED = {
    "content-length-and-chunked": (
        POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "chunked-and-content-length": (
        POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    ),
    "gzip-coding": (POST + b"Transfer-Encoding: gzip\r\n\r\n", 501),
    "gzip-then-chunked": (POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    "two-content-lengths": (POST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
    "non-numeric-content-length": (POST + b"Content-Length: abc\r\n\r\n", 400),
    "negative-content-length": (POST + b"Content-Length: -1\r\n\r\n", 400),
    "garbage-request-line": (b"GARBAGE\r\n\r\n", 400),
    "space-before-colon": (b"GET /v1/health HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n", 400),
    "header-section-too-large": (
        b"GET /v1/health HTTP/1.1\r\nX-Big: " + b"a" * 16500 + b"\r\n\r\n",
        431,
    ),
    "http-2.0": (b"GET /v1/health HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 400),
    "malformed-chunk-size": (
        POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        400,
    ),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_refused_request_gets_a_json_error_and_the_connection_is_closed(
    server: ServeProcess, name: str
) -> None:
    request, status = REFUSED[name]
    answer, closed = exchange_then_closed(server, request)
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    assert isinstance(answer.json()["error"], str) and answer.json()["error"]
    assert int(answer.headers["content-length"]) == len(answer.body)
    assert answer.headers["connection"].lower() == "close"
    assert closed
    assert health_answers(server)  # the server still answers a fresh connection
