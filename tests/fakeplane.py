"""A fake (possibly malicious) control plane for the agent tests: a real HTTP server on
127.0.0.1 that answers the node routes and signs desired-state statements with its own per-test
Ed25519 key, with hooks to tamper with what it serves.

    with FakePlane() as plane:
        plane.publish(release_id="r1", sequence=1)
        plane.url  # http://127.0.0.1:<port>
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_id(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_public(path: Path, *keys: Ed25519PrivateKey) -> Path:
    path.write_bytes(b"".join(public_pem(k) for k in keys))
    return path


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def release_signature(private: Ed25519PrivateKey, release: dict[str, Any]) -> dict[str, str]:
    """What `release sign` adds to a release (SIGNED_STATE.md §2)."""
    fields = {
        "type": "autonomy.release/v1",
        **{
            k: release.get(k)
            for k in ("release_id", "channel", "artifact_ref", "lock_fingerprint", "metadata")
        },
    }
    signed = canonical(fields)
    return {
        "key_id": key_id(private),
        "algorithm": "Ed25519",
        "signed": base64.b64encode(signed).decode(),
        "signature": base64.b64encode(private.sign(signed)).decode(),
    }


class FakePlane:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.release: dict[str, Any] | None = None
        self.ttl = timedelta(minutes=5)
        self.issued_at: datetime | None = None  # None: now
        # Hooks: change the statement before signing / the body or headers after signing.
        self.statement_hook: Callable[[dict[str, Any]], None] | None = None
        self.answer_hook: Callable[[dict[str, Any], dict[str, str]], None] | None = None
        self.failures: list[tuple[int, str | None]] = []  # (status, Retry-After) to answer first
        self.acks: list[dict[str, Any]] = []
        self.events: dict[str, dict[str, Any]] = {}
        self.posts = 0
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.connections: set[socket.socket] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def publish(self, **fields: Any) -> dict[str, Any]:
        release = {
            "release_id": "r1",
            "channel": "stable",
            "sequence": 1,
            "artifact_ref": "oci://registry/app@sha256:aa",
            "lock_fingerprint": "sha256:lock1",
            "policy_ref": None,
            "metadata": {},
            "created_at": "2026-11-29T10:00:00Z",
            "release_signature": None,
            **fields,
        }
        self.release = release
        return release

    def answer(self, node_id: str | None, channel: str) -> tuple[int, dict[str, str], bytes]:
        if self.release is None:
            return 404, {}, canonical({"error": "no release"})
        body = dict(self.release)
        issued = self.issued_at or datetime.now(UTC)
        rsig = body.get("release_signature")
        statement = {
            "type": "autonomy.desired-state/v1",
            "node_id": node_id,
            "channel": channel,
            "release_id": body["release_id"],
            "sequence": body["sequence"],
            "artifact_ref": body["artifact_ref"],
            "lock_fingerprint": body["lock_fingerprint"],
            "plan_id": None,
            "spec_digest": None,
            "release_signature": {"key_id": rsig["key_id"], "signature": rsig["signature"]}
            if rsig
            else None,
            "issued_at": rfc3339(issued),
            "expires_at": rfc3339(issued + self.ttl),
            "key_id": key_id(self.key),
        }
        if self.statement_hook:
            self.statement_hook(statement)
        raw = canonical(statement)
        headers = {
            "X-Autonomy-Desired-State": base64.b64encode(raw).decode(),
            "X-Autonomy-Desired-State-Signature": base64.b64encode(self.key.sign(raw)).decode(),
            "X-Autonomy-Key-Id": key_id(self.key),
        }
        if self.answer_hook:
            self.answer_hook(body, headers)
        return 200, headers, canonical(body)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            if self.failures:
                status, retry_after = self.failures.pop(0)
                headers = {"Retry-After": retry_after} if retry_after else {}
                return status, headers, canonical({"error": "try later"})
            parts = urlsplit(path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if method == "GET" and parts.path == "/v1/releases/latest":
                return self.answer(query.get("node_id"), query.get("channel", "stable"))
            if method == "POST" and parts.path.startswith("/v1/nodes/"):
                ack = json.loads(body)
                ack["node_id"] = parts.path.split("/")[3]
                self.acks.append(ack)
                return 200, {}, canonical(ack)
            if method == "POST" and parts.path == "/v1/events":
                self.posts += 1
                events = json.loads(body)["events"]
                inserted = 0
                for event in events:
                    if event["event_id"] not in self.events:
                        self.events[event["event_id"]] = event
                        inserted += 1
                answer = {
                    "received": len(events),
                    "inserted": inserted,
                    "deduped": len(events) - inserted,
                }
                return 200, {}, canonical(answer)
            return 404, {}, canonical({"error": "unknown route"})

    def events_of(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events.values() if e["event_type"] == event_type]

    def start(self) -> FakePlane:
        plane = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                plane.connections.add(self.connection)

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, data = plane.handle(method, self.path, body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        for conn in list(self.connections):  # kept-alive connections end with the server
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.connections.clear()

    def __enter__(self) -> FakePlane:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class TamperingProxy(FakePlane):
    """A man in the middle before a real server: forwards every request to UPSTREAM and lets
    `answer_hook(body, headers)` change the poll answer's JSON body or headers on the way."""

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.upstream + path, data=body or None, method=method)
        if body:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, headers, data = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            status, headers, data = err.code, dict(err.headers), err.read()
        headers = {k: v for k, v in headers.items() if k.lower().startswith("x-autonomy")}
        if self.answer_hook and path.startswith("/v1/releases/latest") and status == 200:
            decoded = json.loads(data)
            self.answer_hook(decoded, headers)
            data = canonical(decoded)
        return status, headers, data
