"""The transcoder's bytes and the log records' bytes are msgpack.packb's, whichever thread
encodes and whatever failed before."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.records import record_bytes_of
from ledger.transcoder import MsgpackTranscoder, _default

values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=20)
    | st.binary(max_size=20) | st.uuids()
    | st.datetimes(timezones=st.just(UTC)),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=5),
    max_leaves=20)


def _reference(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_default, datetime=True, use_bin_type=True)


@settings(max_examples=300, deadline=None)
@given(values)
def test_encode_gives_packbs_bytes_and_decodes_back(value: Any) -> None:
    codec = MsgpackTranscoder()
    assert codec.encode(value) == _reference(value)
    assert codec.packer().pack(value) == _reference(value)  # (the audit's own packer)
    assert codec.decode(codec.encode(value)) == value


def test_a_failed_encode_leaves_nothing_behind() -> None:
    codec = MsgpackTranscoder()
    packer = codec.packer()
    for pack in (codec.encode, packer.pack):
        with pytest.raises(TypeError):
            pack({"a": [1, 2, object()]})
        assert pack({"b": 1}) == _reference({"b": 1})


def _wrong_at_once(make: Callable[[int], tuple[Callable[[], bytes], bytes]]) -> list[int]:
    """Eight threads each make their own bytes 2,000 times at once (make(n) gives the call and
    the bytes it must give); the threads that ever got other bytes."""
    wrong: list[int] = []

    def work(n: int) -> None:
        call, want = make(n)
        for _ in range(2000):
            if call() != want:
                wrong.append(n)
                return

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wrong


def test_threads_encoding_at_once_get_their_own_bytes() -> None:
    codec = MsgpackTranscoder()

    def make(n: int) -> tuple[Callable[[], bytes], bytes]:
        value = {"n": n, "id": UUID(int=n), "at": datetime(2021, 1, 1, tzinfo=UTC),
                 "s": "x" * (n % 300)}
        return (lambda: codec.encode(value)), _reference(value)

    assert _wrong_at_once(make) == []


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.integers(1, 2**63 - 1), st.text(max_size=80),
       st.binary(max_size=3000))
def test_record_bytes_are_packbs(id_bytes: bytes, version: int, topic: str, state: bytes) -> None:
    want = msgpack.packb([id_bytes, version, topic, state], use_bin_type=True)
    assert record_bytes_of(id_bytes, version, topic, state) == want


def test_a_failed_record_leaves_nothing_behind() -> None:
    with pytest.raises(TypeError):
        record_bytes_of(b"\0" * 16, 1, "topic", object())  # type: ignore[arg-type]
    want = msgpack.packb([b"\1" * 16, 2, "t", b"s"], use_bin_type=True)
    assert record_bytes_of(b"\1" * 16, 2, "t", b"s") == want


def test_threads_making_records_at_once_get_their_own_bytes() -> None:
    def make(n: int) -> tuple[Callable[[], bytes], bytes]:
        args = (n.to_bytes(16, "big"), n + 1, f"topic-{n}", b"x" * (n * 97 % 4000))
        return (lambda: record_bytes_of(*args)), msgpack.packb(list(args), use_bin_type=True)

    assert _wrong_at_once(make) == []
