"""Bounds on what a body and a signature base may make the ledger hold or do.

parse_canonical refuses a body nested deeper than MAX_DEPTH arrays and objects with the stable
code nesting_too_deep, on each of its ways (msgspec's for canonical ASCII-keyed bodies, json's
for the rest), whatever the depth: before, a body nested a few thousand levels deep escaped as a
RecursionError (a plain-text 500 over HTTP, and "no verdict" from verify when planted in the log).
parse_base keeps only small bases in its cache, so a signature base made of megabytes of nonce
is not remembered.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import DomainError
from ledger import signing
from ledger.signing import MAX_DEPTH, canonical_json, parse_base, parse_canonical, signature_params


def nested(depth: int, shape: str) -> bytes:
    """A canonical body nested exactly `depth` arrays/objects deep."""
    opens, closes = [], []
    for level in range(depth):
        kind = shape[level % len(shape)]
        if kind == "[":
            opens.append("[")
            closes.append("]")
        else:
            opens.append('{"a":')
            closes.append("}")
    # the innermost container holds a value (an empty object or array ends the nesting)
    text = "".join(opens[:-1]) + ("[1]" if opens[-1] == "[" else '{"a":1}') + "".join(reversed(closes[:-1]))
    return text.encode()


def test_the_nesting_helper_counts_levels_as_the_parser_does() -> None:
    assert parse_canonical(nested(1, "[")) == [1]
    assert parse_canonical(nested(2, "{[")) == {"a": [1]}
    assert parse_canonical(nested(3, "[{")) == [{"a": [1]}]


@pytest.mark.parametrize("shape", ["[", "{", "[{", "{["])
def test_the_deepest_accepted_body_parses(shape: str) -> None:
    body = nested(MAX_DEPTH, shape)
    assert canonical_json(parse_canonical(body)) == body


# Every way through parse_canonical: msgspec's (canonical, ASCII keys, short integers, any text)
# and json's (a 16-digit integer, a body that is not canonical at all). A key that is not ASCII
# also takes json's way, and is refused as non_canonical as soon as it is read.
WAYS = {
    "msgspec": lambda body: body,
    "non-ASCII text": lambda body: b'{"a":' + body + ',"b":"林业碳票"}'.encode(),
    "long integer": lambda body: b'{"a":' + body + b',"b":1000000000000000}',
    "not canonical": lambda body: b"[ " + body + b"]",
}


@pytest.mark.parametrize("way", sorted(WAYS))
@pytest.mark.parametrize("depth", [MAX_DEPTH + 2, 200, 5_000, 200_000])
def test_a_body_nested_too_deep_is_refused_with_a_stable_code(way: str, depth: int) -> None:
    body = WAYS[way](nested(depth, "[{"))
    with pytest.raises(DomainError) as e:
        parse_canonical(body)
    assert e.value.code == "nesting_too_deep"
    assert f"at most {MAX_DEPTH}" in e.value.message


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3 * MAX_DEPTH), st.text("[{", min_size=1, max_size=5),
       st.sampled_from(sorted(WAYS)))
def test_depth_alone_decides_whether_a_body_is_refused_for_nesting(depth: int, shape: str,
                                                                   way: str) -> None:
    body = WAYS[way](nested(depth, shape))
    wrapped = 0 if way == "msgspec" else 1  # the ways that wrap the body add one level
    try:
        parse_canonical(body)
        code = None
    except DomainError as e:
        code = e.code
    if depth + wrapped > MAX_DEPTH:
        assert code == "nesting_too_deep"
    else:
        assert code != "nesting_too_deep"


def test_a_wide_body_is_not_deep() -> None:
    items = [{"serials": [{"first": i, "last": i + 1}]} for i in range(2_000)]
    body = canonical_json({"args": {"items": items}})
    assert parse_canonical(body)["args"]["items"][1999]["serials"][0]["last"] == 2_000


def test_the_refusal_does_not_depend_on_how_deep_the_caller_already_is() -> None:
    body = nested(MAX_DEPTH + 1, "[")

    def at_depth(n: int) -> Any:
        if n == 0:
            return parse_canonical(body)
        return at_depth(n - 1)

    for n in (0, 400, 800):
        with pytest.raises(DomainError) as e:
            at_depth(n)
        assert e.value.code == "nesting_too_deep"


def test_a_huge_signature_base_is_not_kept_by_the_cache() -> None:
    signing._parse_base_cached.cache_clear()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(40):
            params = signature_params(("@method",), created=1, keyid="k", nonce=f"{i}" + "n" * 250_000,
                                      tag="carbon-ledger-read")
            base = f'"@method": GET\n"@signature-params": {params}'
            assert parse_base(base).params["created"] == 1
            del base, params
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 40 bases of 250 KB: 10 MB if they were cached (twice that with their parsed nonces)
    assert after - before < 1_000_000, f"{after - before:,} bytes kept"


def test_small_bases_are_still_cached() -> None:
    signing._parse_base_cached.cache_clear()
    params = signature_params(("@method",), created=1, keyid="k", nonce="abc", tag="t")
    base = f'"@method": GET\n"@signature-params": {params}'
    assert parse_base(base) is parse_base(base)
