"""The edge's bookkeeping in-process: counting connections, the refusals it writes itself, and
serve's options for its limits. (What a real connection sees is in tests/e2e/test_hostile_clients.py.)"""

from __future__ import annotations

import argparse
import json
import resource

import pytest

from api import transport
from api.limits import Limits, add_limit_options, limits_from
from api.problems import problem


def test_the_edge_counts_connections_per_client_and_in_all() -> None:
    edge = transport.Edge(Limits(max_connections=5, max_per_client=2))
    assert edge.admit("10.0.0.1") is None and edge.admit("10.0.0.1") is None
    refusal = edge.admit("10.0.0.1")
    assert refusal is not None and "10.0.0.1 has 2 connections open" in refusal
    assert edge.admit("10.0.0.2") is None and edge.admit("10.0.0.3") is None
    assert edge.admit(None) is None  # a client with no address (a Unix socket): counted in all
    refusal = edge.admit("10.0.0.4")
    assert refusal is not None and refusal.startswith("the server has 5 connections open")
    edge.release("10.0.0.1")
    assert edge.admit("10.0.0.1") is None  # its place is free again
    for client in ("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3", None):
        edge.release(client)
    assert edge.open == 0 and edge.per_client == {}


def test_no_per_client_limit_when_it_is_zero() -> None:
    edge = transport.Edge(Limits(max_connections=100, max_per_client=0))
    assert all(edge.admit("10.0.0.1") is None for _ in range(100))
    assert edge.admit("10.0.0.1") is not None  # the total still holds


def test_the_connection_cap_stays_below_the_descriptor_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert transport.connection_cap(Limits(max_connections=10 ** 9)) == soft - 128
    assert transport.connection_cap(Limits(max_connections=0)) == soft - 128
    assert transport.connection_cap(Limits(max_connections=7)) == 7


@pytest.mark.parametrize("code", ["headers_too_large", "request_timeout", "too_many_connections",
                                  "invalid_argument"])
def test_the_edges_refusals_are_the_problems_the_application_writes(code: str) -> None:
    raw = transport.problem_response(code, "a sentence with 42 in it", retry_after=1)
    head, _, body = raw.partition(b"\r\n\r\n")
    expected = problem(code, "a sentence with 42 in it")
    lines = head.decode().split("\r\n")
    assert lines[0] == f"HTTP/1.1 {expected.status_code} " + {
        400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
        503: "Service Unavailable"}[expected.status_code]
    assert "content-type: application/problem+json" in lines
    assert f"content-length: {len(body)}" in lines
    assert "connection: close" in lines and "retry-after: 1" in lines
    assert json.loads(body) == json.loads(expected.body)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_limit_options(parser)
    return parser.parse_args(list(argv))


def test_serve_options_make_the_limits() -> None:
    assert limits_from(parse()) == Limits()
    limits = limits_from(parse("--max-connections", "100", "--max-connections-per-client", "0",
                               "--keep-alive-timeout", "1.5", "--header-timeout", "3",
                               "--body-timeout", "120"))
    assert (limits.max_connections, limits.max_per_client) == (100, 0)
    assert (limits.keep_alive_s, limits.head_s, limits.body_s) == (1.5, 3.0, 120.0)


@pytest.mark.parametrize("argv", [("--max-connections", "-1"), ("--header-timeout", "0"),
                                  ("--body-timeout", "a while"), ("--keep-alive-timeout", "7200")])
def test_serve_options_out_of_range_are_refused(argv: tuple[str, str]) -> None:
    with pytest.raises(argparse.ArgumentError):
        parse(*argv)
