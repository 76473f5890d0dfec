"""The reference node agent of autonomy-orchestrator, and its Python API for node authors.

Importable without Django (standard library + `cryptography`). `Client` polls, verifies, acks and
sends events; `Agent` is the loop `autonomy-orchestrator agent` runs. See docs/agent.md.
"""

from autonomy_agent.agent import Agent, AgentConfig, ApplyResult
from autonomy_agent.client import Client
from autonomy_agent.errors import (
    AgentError,
    BadReleaseSignature,
    BadSignature,
    Expired,
    Mismatch,
    NoRelease,
    Rollback,
    TransportError,
    Unavailable,
    UnknownKey,
    UnsignedAnswer,
    UnsignedRelease,
    VerificationError,
)
from autonomy_agent.state import StateDir, StateDirBusy
from autonomy_agent.transport import Backoff
from autonomy_agent.verify import (
    DesiredState,
    ReleaseSignature,
    load_public_key_files,
    load_public_keys,
    verify_desired_state,
    verify_release_signature,
)

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "ApplyResult",
    "Backoff",
    "BadReleaseSignature",
    "BadSignature",
    "Client",
    "DesiredState",
    "Expired",
    "Mismatch",
    "NoRelease",
    "ReleaseSignature",
    "Rollback",
    "StateDir",
    "StateDirBusy",
    "TransportError",
    "Unavailable",
    "UnknownKey",
    "UnsignedAnswer",
    "UnsignedRelease",
    "VerificationError",
    "load_public_key_files",
    "load_public_keys",
    "verify_desired_state",
    "verify_release_signature",
]
