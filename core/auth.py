"""Who is asking, and may they? Roles, principals and the one authorization decision (API.md §6).

Pure functions and frozen values only: no ORM, no app imports, nothing that blocks. The HTTP edge
(both request paths) turns a request into a `Principal` (a bearer token through
`access.services.token_resolve`, else the client certificate through `principal_from_tls`), asks
`authorize()` with the route template from `core.policy`, and answers the `Decision`. In open
loopback mode (`auth_mode()` says OPEN) it asks `open_mode_refusal()` instead.

    principal = principal_from_tls(scope["extensions"].get("tls")) or ANONYMOUS
    decision = authorize(principal, "GET", "/v1/releases/latest",
                         path_params={}, query={"channel": "stable"}, body_node_ids=())
    if not decision.allowed:
        return decision.status, decision.headers(), decision.body()
    node_id = decision.assumed_node_id or query.get("node_id")  # node without ?node_id=
"""

from __future__ import annotations

import contextvars
import enum
import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID


class Role(enum.IntEnum):
    """Ordered: a higher role may do everything a lower one may (except node-scoped business)."""

    NODE = 1
    VIEWER = 2
    OPERATOR = 3
    ADMIN = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        """`node|viewer|operator|admin` → Role; ValueError naming the choices otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(
                f"unknown role {text!r} (choose one of {', '.join(r.label for r in cls)})"
            ) from None


ROLE_CHOICES = tuple(r.label for r in Role)


class Kind(enum.StrEnum):
    TOKEN = "token"
    CERT = "cert"
    SESSION = "session"
    ANONYMOUS = "anonymous"
    SYSTEM = "system"


@dataclass(frozen=True)
class Principal:
    """The authenticated actor of one request (or of the server's own work).

    `role` is None for anonymous. `node_id` is set for the node role only. `claimed_operator` keeps
    `X-Autonomy-Operator` (or a body's `operator`) when it differs from `name`; it never grants
    anything. `rejected` says why a presented credential was refused (a bad token): such a
    principal is anonymous and gets 401 wherever a credential is needed.
    """

    kind: Kind
    name: str
    role: Role | None = None
    node_id: str | None = None
    claimed_operator: str | None = None
    rejected: str | None = None
    # A token's expiry (UNIX seconds), so a cached principal is refused the moment it expires.
    expires_at: float | None = field(default=None, compare=False, repr=False)

    @property
    def authenticated(self) -> bool:
        return self.role is not None

    @property
    def actor(self) -> str:
        """The name history and audit record for this request."""
        return self.name

    def with_claim(self, claimed: str | None) -> Principal:
        """This principal, keeping `claimed` as `claimed_operator` when it names someone else."""
        claimed = (claimed or "").strip() or None
        if claimed == self.name:
            claimed = None
        return Principal(self.kind, self.name, self.role, self.node_id, claimed, self.rejected)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "name": self.name,
            "role": self.role.label if self.role else None,
            "node_id": self.node_id,
            "claimed_operator": self.claimed_operator,
        }


ANONYMOUS = Principal(Kind.ANONYMOUS, "anonymous")


def system(name: str = "evaluator") -> Principal:
    """The server's own automatic actions (`evaluator`, `crl-sync`, …): admin rights."""
    return Principal(Kind.SYSTEM, name, Role.ADMIN)


@functools.lru_cache(maxsize=256)
def open_mode_principal(claimed_operator: str | None = None) -> Principal:
    """Open loopback mode: the local user, named by `X-Autonomy-Operator` as before (§6).
    Memoised (bounded; a Principal is immutable): one object per claimed name, not per request."""
    name = (claimed_operator or "").strip() or "anonymous"
    return Principal(Kind.ANONYMOUS, name, Role.ADMIN)


RESERVED_ACTORS = frozenset({"evaluator"})

# (route template, source IP) of the request being served, for audit records written by the
# services (set by core.middleware.PrincipalMiddleware; None outside a request).
REQUEST_CONTEXT: contextvars.ContextVar[tuple[str | None, str | None] | None] = (
    contextvars.ContextVar("autonomy_request_context", default=None)
)


def is_open_mode(principal: Principal) -> bool:
    """The local operator of open loopback mode or `--auth off` (no credential, all rights)."""
    return principal.kind is Kind.ANONYMOUS and principal.role is not None


def acting(principal: Principal | None, claimed: str | None) -> Principal:
    """Who acts in a request: the authenticated principal, keeping a differing
    `X-Autonomy-Operator` / body `operator` as `claimed_operator`. Without a credential (open
    loopback mode, `--auth off`, or no edge at all) the claim names the actor as before, except
    a reserved name (`evaluator`) which a client may not take: it stays a claim of `anonymous`."""
    claimed = (claimed or "").strip() or None
    if principal is None or is_open_mode(principal):
        if claimed in RESERVED_ACTORS:
            return Principal(Kind.ANONYMOUS, "anonymous", Role.ADMIN, claimed_operator=claimed)
        return open_mode_principal(claimed)
    return principal.with_claim(claimed)


# --- certificates ------------------------------------------------------------------------------

CERT_GROUPS: dict[str, Role] = {
    "autonomy:admins": Role.ADMIN,
    "autonomy:operators": Role.OPERATOR,
    "autonomy:viewers": Role.VIEWER,
}
NODE_URI_PREFIX = "urn:autonomy:node:"


def cert_identity(cert: x509.Certificate) -> dict[str, Any]:
    """What authorization needs from a client certificate: subject CN, O values, SAN URIs.

    Computed once per TLS connection by core.tls's scope hook (keys `client_cert_cn`,
    `client_cert_organizations`, `client_cert_uris` of the asgiref TLS extension).
    """
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    except x509.ExtensionNotFound:
        uris = []
    return {
        "client_cert_cn": str(cns[0].value) if cns else None,
        "client_cert_organizations": [str(o.value) for o in orgs],
        "client_cert_uris": uris,
    }


def principal_from_cert(
    *, cn: str | None, organizations: Iterable[str], uris: Iterable[str]
) -> Principal | None:
    """§6: O `autonomy:admins|operators|viewers` → that role (highest wins); none → a node whose
    node_id is the SAN URI `urn:autonomy:node:<id>`, else the CN. None when no name is left."""
    roles = [CERT_GROUPS[o] for o in organizations if o in CERT_GROUPS]
    if roles:
        return Principal(Kind.CERT, cn or "", max(roles)) if cn else None
    node_id = next(
        (
            u[len(NODE_URI_PREFIX) :]
            for u in uris
            if u.startswith(NODE_URI_PREFIX) and u != NODE_URI_PREFIX
        ),
        None,
    )
    node_id = node_id or cn
    if not node_id:
        return None
    return Principal(Kind.CERT, cn or node_id, Role.NODE, node_id=node_id)


def principal_from_tls(tls: Mapping[str, Any] | None) -> Principal | None:
    """The principal of a verified client certificate in scope["extensions"]["tls"], or None."""
    if not tls or not tls.get("client_cert_chain"):
        return None
    if "client_cert_organizations" not in tls:  # a scope filled by something else: parse the PEM
        cert = x509.load_pem_x509_certificate(tls["client_cert_chain"][0].encode())
        tls = {**tls, **cert_identity(cert)}
    return principal_from_cert(
        cn=tls.get("client_cert_cn"),
        organizations=tls.get("client_cert_organizations") or (),
        uris=tls.get("client_cert_uris") or (),
    )


def bearer_token(authorization: str | None) -> str | None:
    """The token of `Authorization: Bearer <token>`; "" for any other (malformed) value; None
    when the header is absent."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return ""
    return token


# --- the decision ------------------------------------------------------------------------------


class NodeScope(enum.Enum):
    """What a `node` principal may do on a route (None in a Rule: nothing)."""

    ANY = "any"  # allowed as is (signing key, plan spec, CRL)
    PATH = "path"  # the route's {node_id} must be its own
    QUERY = "query"  # ?node_id= must be its own; missing → its own is assumed
    BODY = "body"  # every body item's node_id must be its own (403 names the index)


@dataclass(frozen=True)
class Rule:
    """`role` None = no credential needed (health). Otherwise a principal needs at least `role`,
    except that a `node` principal is judged by `node` (its scope) instead."""

    role: Role | None
    node: NodeScope | None = None


ADMIN_ONLY = Rule(Role.ADMIN)


@dataclass(frozen=True)
class Decision:
    status: int  # 200 allowed, 401, 403
    error: str | None = None
    required_role: Role | None = None
    index: int | None = None  # the event whose node_id is not the node's own
    assumed_node_id: str | None = None  # node scope QUERY without ?node_id=: use this one
    reason: str = ""  # short machine word for the audit record and denial aggregation

    @property
    def allowed(self) -> bool:
        return self.status == 200

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.error}
        if self.required_role is not None:
            body["required_role"] = self.required_role.label
        if self.index is not None:
            body["index"] = self.index
        return body


ALLOW = Decision(200)


def lookup(policy: Mapping[tuple[str, str], Rule], method: str, route: str | None) -> Rule:
    """The rule of (method, route); HEAD falls back to GET; no entry → admin-only."""
    if route is None:
        return ADMIN_ONLY
    method = method.upper()
    rule = policy.get((method, route))
    if rule is None and method == "HEAD":
        rule = policy.get(("GET", route))
    return rule or ADMIN_ONLY


def authorize(
    principal: Principal,
    method: str,
    route_template: str | None,
    *,
    path_params: Mapping[str, Any] | None = None,
    query: Mapping[str, Any] | None = None,
    body_node_ids: Sequence[Any] = (),
    policy: Mapping[tuple[str, str], Rule] | None = None,
) -> Decision:
    """May `principal` call `method route_template` with these parameters? (API.md §6)

    `body_node_ids` is the `node_id` of every item of a `POST /v1/events` batch, in order (only
    read for node principals on a BODY-scoped route). `policy` defaults to core.policy.POLICY.
    """
    if policy is None:
        from core.policy import POLICY  # the one table (core.policy imports this module)

        policy = POLICY
    rule = lookup(policy, method, route_template)
    if rule.role is None:
        return ALLOW
    if not principal.authenticated:
        if principal.rejected:
            return Decision(401, f"{principal.rejected}.", reason="bad_credential")
        return Decision(
            401,
            "Authentication required: send `Authorization: Bearer <token>` or a client "
            "certificate.",
            reason="no_credential",
        )
    assert principal.role is not None
    if principal.role == Role.NODE:
        return _node_decision(principal, rule, path_params or {}, query or {}, body_node_ids)
    if principal.role >= rule.role:
        return ALLOW
    return _forbidden(principal, rule.role)


def _forbidden(principal: Principal, required: Role, text: str | None = None) -> Decision:
    role = principal.role.label if principal.role else "none"
    return Decision(
        403,
        text or f"The {role} role may not do this; it needs the {required.label} role.",
        required_role=required,
        reason="role",
    )


def _node_decision(
    principal: Principal,
    rule: Rule,
    path_params: Mapping[str, Any],
    query: Mapping[str, Any],
    body_node_ids: Sequence[Any],
) -> Decision:
    assert rule.role is not None
    own = principal.node_id
    if rule.node is None or own is None:
        return _forbidden(principal, rule.role)
    if rule.node is NodeScope.ANY:
        return ALLOW
    if rule.node is NodeScope.PATH:
        if str(path_params.get("node_id", "")) == own:
            return ALLOW
        return _scope_denied(rule.role, f"A node may only act for itself ({own!r}).")
    if rule.node is NodeScope.QUERY:
        asked = query.get("node_id")
        if asked is None or asked == "":
            return Decision(200, assumed_node_id=own)
        if asked == own:
            return ALLOW
        return _scope_denied(rule.role, f"A node may only ask for itself ({own!r}).")
    for index, node_id in enumerate(body_node_ids):  # NodeScope.BODY
        if node_id != own:
            return Decision(
                403,
                f"Event {index} names another node: a node may only send its own events ({own!r}).",
                required_role=rule.role,
                index=index,
                reason="node_scope",
            )
    return ALLOW


def _scope_denied(required: Role, text: str) -> Decision:
    return Decision(403, text, required_role=required, reason="node_scope")


# --- modes -------------------------------------------------------------------------------------


class AuthMode(enum.StrEnum):
    AUTO = "auto"
    REQUIRED = "required"
    OFF = "off"


class Enforcement(enum.StrEnum):
    ENFORCED = "enforced"  # every request needs a credential its route's rule accepts
    OPEN = "open"  # open loopback mode: no credential, but open_mode_refusal() applies
    OFF = "off"  # --auth off: nothing checked (warned at every start)


LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost", "ip6-loopback"}


@functools.lru_cache(maxsize=1024)
def is_loopback_host(host: str | None) -> bool:
    """A loopback IP (127/8, ::1, v4-mapped) or a loopback name (`localhost`, `*.localhost`).

    Memoised (bounded): open loopback mode asks it twice per request (peer and Host), and
    parsing an address costs more than the rest of the edge's checks together."""
    if not host:
        return False
    host = host.strip().lower().strip("[]")
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def split_host_port(value: str) -> str:
    """The host of `host`, `host:port`, `[v6]` or `[v6]:port` (a Host header, a listen address)."""
    value = value.strip()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value  # bare IPv6 or a plain name


def auth_mode(
    mode: AuthMode | str,
    *,
    listen_addresses: Iterable[str],
    tls_ca_set: bool,
    any_token: bool,
) -> Enforcement:
    """§6 `serve --auth`: `auto` enforces when a listener is not loopback, or `--tls-ca-file` is
    set, or any token exists; otherwise it is open loopback mode."""
    mode = AuthMode(mode)
    if mode is AuthMode.OFF:
        return Enforcement.OFF
    if mode is AuthMode.REQUIRED:
        return Enforcement.ENFORCED
    all_loopback = all(is_loopback_host(split_host_port(a)) for a in listen_addresses)
    if tls_ca_set or any_token or not all_loopback:
        return Enforcement.ENFORCED
    return Enforcement.OPEN


def startup_refusal(
    mode: AuthMode | str,
    *,
    listen_addresses: Iterable[str],
    tls_ca_set: bool,
    any_token: bool,
) -> str | None:
    """The one line `serve` exits with, or None: `auto` (or `required`) on a non-loopback
    listener with no way to authenticate (no token, no `--tls-ca-file`)."""
    mode = AuthMode(mode)
    if mode is AuthMode.OFF or tls_ca_set or any_token:
        return None
    exposed = [a for a in listen_addresses if not is_loopback_host(split_host_port(a))]
    if not exposed:
        return None
    return (
        f"refusing to listen on {exposed[0]} without authentication: create a token first "
        "(`autonomy-orchestrator token create --name NAME --role admin`), pass --tls-ca-file, "
        "or pass --auth off on a sealed network"
    )


@dataclass(frozen=True)
class Refusal:
    status: int
    error: str
    reason: str
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": self.error}


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_ALLOWED_FETCH_SITES = {"same-origin", "none"}


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def open_mode_refusal(
    *,
    method: str,
    peer_host: str | None,
    host_header: str | None,
    origin: str | None = None,
    sec_fetch_site: str | None = None,
    content_type: str | None = None,
    body_length: int = 0,
    json_only: bool = True,
) -> Refusal | None:
    """Open loopback mode's checks (§6), or None when the request may be served.

    Loopback peer only (403); a loopback `Host` only, against DNS rebinding (400); no cross-site
    browser request, by `Sec-Fetch-Site` or an `Origin` that is not this very host (403); and when
    `json_only` (the /v1/ API; the admin's forms have their own CSRF check) no state-changing
    request whose body is not `application/json` (415; an empty body without a type is fine).
    """
    if not is_loopback_host(peer_host):
        return Refusal(
            403,
            "Only loopback clients are served without authentication; create a token "
            "(`autonomy-orchestrator token create`) to serve others.",
            "open_mode_peer",
        )
    if not host_header or not is_loopback_host(split_host_port(host_header)):
        return Refusal(
            400,
            "The Host header must name a loopback address when serving without authentication.",
            "open_mode_host",
        )
    if sec_fetch_site is not None and sec_fetch_site.strip().lower() not in _ALLOWED_FETCH_SITES:
        return Refusal(403, "Cross-site browser requests are refused.", "cross_site")
    if origin is not None:
        parsed = urlsplit(origin.strip())
        if (
            origin.strip().lower() == "null"
            or not is_loopback_host(parsed.hostname)
            or parsed.netloc.lower() != host_header.strip().lower()
        ):
            return Refusal(403, "Cross-site browser requests are refused.", "cross_site")
    if json_only and method.upper() not in SAFE_METHODS:
        if content_type and content_type.strip():
            if not _is_json(content_type):
                return Refusal(
                    415,
                    "State-changing requests must send Content-Type: application/json.",
                    "not_json",
                )
        elif body_length > 0:
            return Refusal(
                415,
                "State-changing requests must send Content-Type: application/json.",
                "not_json",
            )
    return None
