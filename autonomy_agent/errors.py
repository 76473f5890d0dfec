"""What can go wrong talking to the control plane, as exceptions a node author can catch.

`VerificationError` and its subclasses: the answer was received but must not be acted on (the
message names why). `TransportError`: the server could not be asked or answered with an error;
`Unavailable` carries the server's `Retry-After` when it sent one.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error this package raises."""


class VerificationError(AgentError):
    """The desired state is not to be trusted; `reason` is a short machine-readable word.

    `release_id` is set when the desired-state signature itself verified and only the release's
    offline signature was refused (the node may then ack that release `rejected`).
    """

    reason = "unverified"
    release_id: str | None = None


class UnsignedAnswer(VerificationError):
    """The poll answer carries no desired-state signature headers."""

    reason = "unsigned"


class UnknownKey(VerificationError):
    """The answer names a key id that is not among the pinned keys (e.g. rotated away)."""

    reason = "unknown_key"


class BadSignature(VerificationError):
    """The signature does not verify over the statement bytes (tampered or forged)."""

    reason = "bad_signature"


class Expired(VerificationError):
    """The statement's `expires_at` has passed (a replayed or frozen answer)."""

    reason = "expired"


class Rollback(VerificationError):
    """The statement's sequence is lower than one already accepted for the channel."""

    reason = "rollback"


class Mismatch(VerificationError):
    """The signed statement and the answer (or the poll) disagree: node, channel or body."""

    reason = "mismatch"


class UnsignedRelease(VerificationError):
    """Release trust keys are pinned but the release carries no offline signature."""

    reason = "unsigned_release"


class BadReleaseSignature(VerificationError):
    """The offline release signature is unknown, does not verify, or signs other fields."""

    reason = "bad_release_signature"


class TransportError(AgentError):
    """The request did not get a usable answer (connection failure or an HTTP error)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unavailable(TransportError):
    """The server cannot be reached, or answered 503/429 (try again later).

    `retry_after` is the server's `Retry-After` in seconds when it sent one, else None.
    """

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class NoRelease(AgentError):
    """The channel has no release for this node yet (404): keep running what runs."""
