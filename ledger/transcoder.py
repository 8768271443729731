"""A msgpack transcoder for stored events: compact, fast, and strict (no floats)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID

import msgpack
from eventsourcing.persistence import Transcoder

_UUID = 1


def per_thread_packer(**options: Any) -> Callable[[Any], bytes]:
    """pack(obj): the bytes msgpack.packb(obj, **options) gives, from one Packer per thread.
    packb makes (and frees) a Packer and its buffer per call; a Packer gives the same bytes (it
    resets after each pack, and after a failed one) in a third of the time of a small packb. A
    Packer is not safe to share between threads."""
    local = threading.local()

    def pack(obj: Any) -> bytes:
        try:
            packer = local.packer
        except AttributeError:
            packer = local.packer = msgpack.Packer(**options)
        return packer.pack(obj)  # type: ignore[no-any-return]

    return pack


def _default(obj: Any) -> Any:
    if isinstance(obj, UUID):
        return msgpack.ExtType(_UUID, obj.bytes)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in the ledger")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _UUID:
        return UUID(bytes=data)
    return msgpack.ExtType(code, data)


# How stored states decode: by decode() whole, or part by part by an unpacker().
_UNPACKING: dict[str, Any] = {"ext_hook": _ext_hook, "timestamp": 3, "raw": False,
                              "strict_map_key": False}


_STATE_OPTIONS: dict[str, Any] = {"default": _default, "datetime": True, "use_bin_type": True}
_pack_state = per_thread_packer(**_STATE_OPTIONS)


class MsgpackTranscoder(Transcoder):
    """Events' attribute dicts as msgpack; datetimes as msgpack timestamps (UTC)."""

    def encode(self, obj: Any) -> bytes:
        return _pack_state(obj)

    def packer(self) -> msgpack.Packer:
        """A Packer of its own whose pack() gives encode()'s bytes, for a caller that keeps it
        to one thread (and saves encode()'s two calls per state: the audit, per event)."""
        return msgpack.Packer(**_STATE_OPTIONS)

    def decode(self, data: bytes) -> Any:
        return msgpack.unpackb(data, **_UNPACKING)

    def unpacker(self, data: bytes) -> msgpack.Unpacker:
        """An Unpacker over `data` whose items decode as decode() decodes them (for reading a
        state part by part: its map header, keys, values, and values skipped as bytes)."""
        unpacker = msgpack.Unpacker(**_UNPACKING, max_buffer_size=max(len(data), 1))
        unpacker.feed(data)
        return unpacker

