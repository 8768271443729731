"""Property-based API testing with schemathesis against the live server's /openapi.json.

The schema is loaded from a real uvicorn process (the demo posted to it, so reads find data);
every operation gets a bounded number of generated requests, and each response must be no 5xx,
have a documented status code and content type, and match the documented response schema.
Writes are unsigned here (schemathesis cannot sign), so they exercise the refusal paths; their
generated JSON bodies are re-encoded canonically on the way out (CanonicalJsonSession) so that
they reach command parsing, path/body checks and authentication rather than all stopping at
400 non_canonical.

The schema is loaded lazily from a fixture (schemathesis.pytest.from_fixture), since the server
only exists once the fixture has started it; each API operation then runs as a subtest.

Bugs found are pinned at the end of this file as strict xfail tests with their reproductions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.http_signatures import sign_request
from domain.errors import DomainError
from ledger.signing import canonical_json

MAX_EXAMPLES = 10  # per operation, in the fuzzing phase
# The coverage phase (deterministic boundary values) is kept, positive cases only and without
# probing undeclared methods, so that the whole run stays within about a minute.
CONFIG = schemathesis.config.SchemathesisConfig.from_dict({"phases": {"coverage": {
    "unexpected-methods": [], "generation": {"mode": "positive"}}}})
CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance,
          content_type_conformance, response_schema_conformance]


@pytest.fixture(autouse=True)
def _pytest9_node_id_shim(request: pytest.FixtureRequest) -> None:
    """schemathesis' lazy schema (4.32) renames `request.node._nodeid`, an attribute pytest 9
    no longer has; give it one (it only affects how subtests are labelled)."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


# Known bugs (see the strict xfail tests below): integers beyond SQLite's 64-bit range reach the
# store unchecked and the server answers 500. The fuzzing skips exactly those inputs on exactly
# these operations, so that it keeps looking for other defects there; once the bugs are fixed the
# xfail tests fail (strict) and this filter should go.
SQLITE_MAX = 2**63 - 1
KNOWN_OVERFLOW = {"/v1/proofs/inclusion", "/v1/proofs/consistency"}


def _within_sqlite_range(context: Any, query: dict[str, Any] | None) -> bool:
    if context.operation is None or context.operation.path not in KNOWN_OVERFLOW:
        return True
    for value in (query or {}).values():
        try:
            if abs(int(value)) >= SQLITE_MAX:
                return False
        except (TypeError, ValueError):
            continue
    return True


@pytest.fixture
def live_schema(demo_world: Any) -> Any:
    loaded = schemathesis.openapi.from_url(demo_world.base_url + "/openapi.json", timeout=30,
                                           config=CONFIG)
    loaded.hook("filter_query")(_within_sqlite_range)
    return loaded


schema = schemathesis.pytest.from_fixture("live_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_the_live_api_conforms_to_its_schema(case: Any, demo_world: Any,
                                             canonical_session: requests.Session) -> None:
    case.call_and_validate(base_url=demo_world.base_url, session=canonical_session,
                           checks=CHECKS, timeout=30)


class CanonicalJsonSession(requests.Session):
    """Sends generated JSON bodies in canonical form (when they have one), so that generated
    commands get past the canonical-JSON gate and into command parsing and authentication,
    instead of all stopping at 400 non_canonical. Bodies with floats are sent as generated."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if request.body and "json" in (request.headers.get("Content-Type") or ""):
            try:
                body = canonical_json(json.loads(request.body))
            except (ValueError, TypeError, DomainError):
                pass
            else:
                request.body = body
                request.headers["Content-Length"] = str(len(body))
        return super().send(request, **kwargs)


@pytest.fixture(scope="module")
def canonical_session() -> Iterator[requests.Session]:
    with CanonicalJsonSession() as session:
        yield session


def test_the_served_schema_documents_every_route(demo_world: Any) -> None:
    document = httpx.get(demo_world.base_url + "/openapi.json", timeout=30).json()
    paths = document["paths"]
    assert "/v1/transfers/batch" in paths and "/v1/checkpoints/latest" in paths
    assert len(paths) >= 40
    problem = document["paths"]["/v1/transfers"]["post"]["responses"]["401"]["content"]
    assert "application/problem+json" in problem


# Bugs found -----------------------------------------------------------------------------------

HUGE = 20344573303068966912  # > 2**64, as schemathesis generated it


def _no_server_error(response: httpx.Response) -> None:
    """What a fix gives: a refusal as problem details (or an empty answer), never a 5xx."""
    assert response.status_code < 500, f"{response.status_code} {response.text[:200]}"
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")


def test_bug_inclusion_proof_of_a_huge_size(demo_world: Any) -> None:
    _no_server_error(httpx.get(demo_world.base_url + "/v1/proofs/inclusion",
                               params={"position": 1, "size": HUGE}, timeout=30))


def test_bug_consistency_proof_of_a_huge_size(demo_world: Any) -> None:
    _no_server_error(httpx.get(demo_world.base_url + "/v1/proofs/consistency",
                               params={"first": 1, "second": HUGE}, timeout=30))


def test_bug_log_page_after_the_largest_position(demo_world: Any) -> None:
    path, query = "/v1/log", f"after={2**63 - 1}"
    headers = sign_request(demo_world.key("fujian-eco"), method="GET", path=path, query=query,
                           created=int(time.time()))
    _no_server_error(httpx.get(f"{demo_world.base_url}{path}?{query}", headers=headers, timeout=30))


def test_bug_cosignature_for_a_huge_checkpoint_size(demo_world: Any) -> None:
    body = canonical_json({"key_id": "0" * 32, "signature": "AA==", "witness": "fujian-eco"})
    _no_server_error(httpx.post(f"{demo_world.base_url}/v1/checkpoints/{HUGE}/cosignatures",
                                content=body, headers={"Content-Type": "application/json"},
                                timeout=30))
