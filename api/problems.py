"""Errors as RFC 9457 problem details: the domain's stable code, its sentence, and its numbers."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import access_log
from domain.errors import CODES, DomainError

PROBLEM_TYPE = "urn:carbon-ledger:error:"

# The HTTP status of each domain error code; anything else a rule refuses is 422.
STATUS: dict[str, int] = {
    "invalid_argument": 400,
    "non_canonical": 400,
    "not_found": 404,
    "method_not_allowed": 405,
    "nesting_too_deep": 400,
    "unsigned": 401,
    "bad_signature": 401,
    "unknown_key": 401,
    "revoked_key": 401,
    "key_not_yet_valid": 401,
    "stale_signature": 401,
    "replay": 401,
    "not_authorized": 403,
    "consent_missing": 403,
    "unknown_participant": 404,
    "unknown_project": 404,
    "unknown_ticket": 404,
    "unknown_pledge": 404,
    "unknown_policy": 404,
    "unknown_claim": 404,
    "unknown_retirement": 404,
    "unknown_trade": 404,
    "unknown_checkpoint": 404,
    "already_exists": 409,
    "duplicate_command": 409,
    "conflict": 409,
    "log_inconsistent": 409,
    "operation_failed": 500,
    "store_unavailable": 503,
    # A server asked about a registry it does not have: the fault is the server's setup, not the
    # request, and it clears once the operator initialises or restores it (so 503, not 404).
    "no_registry": 503,
    "registry_served": 409,
    "batch_too_large": 413,
    "payload_too_large": 413,
    "headers_too_large": 431,
    "request_timeout": 408,
    "too_many_connections": 503,
}
assert set(STATUS) <= set(CODES)

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string", "enum": sorted(CODES)},
        "detail": {"type": "string"},
    },
    "additionalProperties": True,
}


def status_of(code: str) -> int:
    return STATUS.get(code, 422)


def problem(code: str, detail: str, status: int | None = None, *,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    status = status or status_of(code)
    access_log.note(code=code)
    body = {"type": PROBLEM_TYPE + code, "title": CODES.get(code, code), "status": status,
            "code": code, "detail": detail, **extra}
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Signature realm="carbon-ledger"'}
    return JSONResponse(body, status_code=status, media_type="application/problem+json",
                        headers=headers)


def from_domain(error: DomainError) -> JSONResponse:
    extra = {k: v for k, v in error.details.items() if k not in ("type", "title", "status", "detail")}
    return problem(error.code, error.message, **extra)


async def domain_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return from_domain(exc)


def http_error_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """The problem for an error the router or Starlette raised: no route at that path
    (`not_found`), none for that method (`method_not_allowed`, with `Allow`), or another."""
    path = request.url.path
    if exc.status_code == 404 and exc.detail == "Not Found":
        return problem("not_found", f"nothing is served at {path}; the API's paths are listed "
                       "at /docs and /openapi.json")
    if exc.status_code == 405:
        allow = ", ".join(allowed_methods(request))
        return problem("method_not_allowed", f"{path} does not take {request.method}; it takes "
                       f"{allow}", headers={"Allow": allow})
    code = "invalid_argument" if exc.status_code < 500 else "operation_failed"
    return problem(code, str(exc.detail), status=exc.status_code,
                   headers=dict(exc.headers) if exc.headers else None)


# The order methods are listed in an Allow header (the rest follow, sorted).
_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at the request's path (Starlette names the first route's
    only, and several routes can share a path: GET and POST /v1/pledges)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and route_methods and regex.match(request.url.path):
            methods |= set(route_methods)
    return sorted(methods, key=lambda m: (_METHOD_ORDER.index(m) if m in _METHOD_ORDER
                                          else len(_METHOD_ORDER), m))


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the problem responses a route may give."""
    return {s: {"description": "a refusal, as RFC 9457 problem details",
                "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}}}
            for s in statuses}
