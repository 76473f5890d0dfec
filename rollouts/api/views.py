"""HTTP views for rollouts (API.md §3 rows 11-20, 22-25; §4). Views translate: they parse the
request, call one service or selector, and shape the answer."""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpResponse
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from access.services import audited_failure
from core import jsonvalues
from core.auth import Principal, acting
from core.drfauth import principal_of
from core.errors import ApiError
from core.params import MAX_ID_CHARS, param_error, parse_int, parse_limit, parse_offset
from rollouts import progress, selectors, services, signing
from rollouts.models import Phase

OPERATOR_HEADER = "HTTP_X_AUTONOMY_OPERATOR"
DEFAULT_STUCK_THRESHOLD = 3600
MAX_THRESHOLD = 100 * 365 * 86400  # a century: beyond that a datetime cannot go back


def _action_body(request: Request) -> dict[str, Any]:
    raw = request.body
    if not raw.strip():
        return {}
    body = jsonvalues.loads(raw)  # 400 for malformed JSON or a value breaking the rule
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _optional_text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise param_error(key, "must be a string")
    return value


def _actor(request: Request, body: dict[str, Any]) -> tuple[Principal, str | None]:
    """(principal, reason): the principal the edge authenticated; X-Autonomy-Operator, else the
    body's `operator` (a string or null either way), is only its `claimed_operator` (in open
    loopback mode it names the actor, as before; `evaluator` is never taken)."""
    from_body = _optional_text(body, "operator")
    claimed = (request.META.get(OPERATOR_HEADER) or "").strip() or from_body
    return acting(principal_of(request), claimed), _optional_text(body, "reason")


def _flag(request: Request, name: str) -> bool:
    """A boolean query parameter; absent is false, anything but true/false/1/0/yes/no/on/off
    is a 400 (a misspelt `dry_run=ture` must not publish), an empty value too (the schema says
    boolean: `?raw=` is neither)."""
    value = request.query_params.get(name)
    if value is None:
        return False
    raw = value.strip().lower()
    if raw in ("0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise param_error(name, f"must be true or false, not {raw!r}")


def plan_detail(plan: Any) -> dict[str, Any]:
    if not services.plan_spec_intact(plan):  # checked (and halted) first: show the outcome
        plan = services.plan_get(plan.plan_id)
    return {
        **selectors.plan_summary(plan),
        "spec": orjson.loads(bytes(plan.spec)),
        "signature": selectors.plan_signature(plan),
        "status": selectors.plan_status(plan),
    }


class RolloutListView(APIView):
    """GET: plans, newest first (`limit`, `offset`, `phase`). POST: publish a plan (201), or
    validate and preview the cohorts with `?dry_run=true` (200, nothing stored)."""

    def get(self, request: Request) -> Response:
        limit = parse_limit(request.query_params)
        offset = parse_offset(request.query_params)
        phase = request.query_params.get("phase")  # given but empty is a 400, like `limit=`
        if phase is not None and phase not in Phase.values:
            raise param_error("phase", f"must be one of {', '.join(Phase.values)}")
        plans = selectors.plan_list(limit=limit, offset=offset, phase=phase)
        return Response(
            {
                "plans": [selectors.plan_summary(plan) for plan in plans],
                "count": len(plans),
                "limit": limit,
                "offset": offset,
            }
        )

    def post(self, request: Request) -> Response:
        raw = request.body
        if _flag(request, "dry_run"):
            return Response(services.rollout_publish_dry_run(raw_spec=raw))
        actor = acting(principal_of(request), request.META.get(OPERATOR_HEADER))
        with audited_failure("rollout.plan.created", actor):
            plan = services.rollout_publish(raw_spec=raw, principal=actor)
        return Response(plan_detail(plan), status=201)


class RolloutDetailView(APIView):
    def get(self, request: Request, plan_id: str) -> Response:
        return Response(plan_detail(services.plan_get(plan_id)))


class RolloutSpecView(APIView):
    """The signed spec. The envelope embeds the stored bytes verbatim; `?raw=true` answers the
    stored bytes alone (digest and signature in `X-Autonomy-*` headers)."""

    def get(self, request: Request, plan_id: str) -> HttpResponse:
        plan = services.plan_get(plan_id)
        raw = bytes(plan.spec)
        if _flag(request, "raw"):
            response = HttpResponse(raw, content_type="application/json")
            response["X-Autonomy-Digest"] = plan.digest
            response["X-Autonomy-Signature"] = plan.signature
            response["X-Autonomy-Key-Id"] = plan.key_id
            return response
        body = (
            b'{"plan_id":'
            + orjson.dumps(plan.plan_id)
            + b',"spec":'
            + raw
            + b',"digest":'
            + orjson.dumps(plan.digest)
            + b',"signature":'
            + orjson.dumps(selectors.plan_signature(plan))
            + b"}"
        )
        return HttpResponse(body, content_type="application/json")


class RolloutStatusView(APIView):
    def get(self, request: Request, plan_id: str) -> Response:
        return Response(selectors.plan_status(services.plan_get(plan_id)))


class RolloutNodesView(APIView):
    """GET: one page of the nodes behind a status count (`stage_id`, `state`, `limit`,
    `cursor`)."""

    def get(self, request: Request, plan_id: str) -> Response:
        plan = services.plan_get(plan_id)  # 404 before 400 for an unknown plan
        query = request.query_params
        state = query.get("state", "targeted")
        if state not in progress.COUNT_KEYS:
            raise param_error("state", f"must be one of {', '.join(progress.COUNT_KEYS)}")
        limit = parse_limit(query)
        stage_id = query.get("stage_id")
        cursor = query.get("cursor")
        if cursor is not None and (not cursor or len(cursor) > MAX_ID_CHARS):
            raise param_error("cursor", "must be a next_cursor returned by a previous page")
        return Response(
            selectors.plan_nodes(
                plan=plan, stage_id=stage_id, state=state, limit=limit, cursor=cursor
            )
        )


class RolloutActionView(APIView):
    """POST …/{pause,resume,promote,halt,cancel}: body `{"reason", "stage_id"}` (both optional;
    `stage_id` = the stage meant, 409 once the plan has moved on), operator from the
    X-Autonomy-Operator header (or `"operator"`); 200 with the status, 409 naming the phase."""

    transition = ""

    def post(self, request: Request, plan_id: str) -> Response:
        body = _action_body(request)
        actor, reason = _actor(request, body)
        with audited_failure(services.audit_event(self.transition), actor, plan_id):
            plan = services.rollout_transition(
                plan_id=plan_id,
                action=self.transition,
                principal=actor,
                reason=reason,
                stage_id=_optional_text(body, "stage_id"),
            )
        return Response(selectors.plan_status(plan))


class RolloutRecoverView(APIView):
    def post(self, request: Request, plan_id: str) -> Response:
        body = _action_body(request)
        actor, reason = _actor(request, body)
        strategy = body.get("strategy")
        services.plan_get(plan_id)  # 404 before 400 for an unknown plan
        if strategy is None:
            raise param_error("strategy", "is required: retry, rollback or skip_failed")
        if not isinstance(strategy, str):
            raise param_error("strategy", "must be one of retry, rollback, skip_failed")
        with audited_failure("rollout.plan.recovered", actor, plan_id):
            plan = services.rollout_recover(
                plan_id=plan_id,
                strategy=strategy,
                principal=actor,
                reason=reason,
                stage_id=_optional_text(body, "stage_id"),
            )
        return Response(selectors.plan_status(plan))


class StageGatesView(APIView):
    def get(self, request: Request, plan_id: str, stage_id: str) -> Response:
        report = selectors.stage_gates(plan=services.plan_get(plan_id), stage_id=stage_id)
        return Response(
            {
                "plan_id": plan_id,
                "stage_id": stage_id,
                "stage_phase": report.stage.phase,
                "gates": [gate.as_dict() for gate in report.gates],
                "manual_approved": report.stage.manual_approved,
                "all_passed": report.all_passed,
            }
        )


class StageGatesApproveView(APIView):
    def post(self, request: Request, plan_id: str, stage_id: str) -> Response:
        body = _action_body(request)
        actor, reason = _actor(request, body)
        with audited_failure("rollout.gate.approved", actor, plan_id):
            approval = services.rollout_gate_approve(
                plan_id=plan_id, stage_id=stage_id, principal=actor, reason=reason
            )
        return Response(approval.as_dict())


class StuckView(APIView):
    def get(self, request: Request) -> Response:
        threshold = parse_int(
            "threshold_seconds",
            request.query_params.get("threshold_seconds"),
            default=DEFAULT_STUCK_THRESHOLD,
            minimum=0,
            maximum=MAX_THRESHOLD,
        )
        return Response(
            {
                "threshold_seconds": threshold,
                "stuck_plans": selectors.stuck_plans(threshold_seconds=threshold),
            }
        )


class SigningKeyView(APIView):
    def get(self, request: Request) -> HttpResponse:
        try:
            key = signing.current_key()
        except signing.SigningKeyError as exc:
            raise ApiError(503, str(exc)) from None
        response = HttpResponse(key.public_pem, content_type="application/x-pem-file")
        response["X-Autonomy-Key-Id"] = key.key_id
        return response


class SigningKeysView(APIView):
    """`GET /v1/signing-keys`: the keyring's public keys, active first (docs/trust.md)."""

    def get(self, request: Request) -> Response:
        try:
            ring = signing.current_ring()
        except signing.SigningKeyError as exc:
            raise ApiError(503, str(exc)) from None
        return Response({"keys": selectors.signing_keys_as_list(ring)})
