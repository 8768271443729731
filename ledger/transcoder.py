"""A msgpack transcoder for stored events: compact, fast, and strict (no floats)."""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

import msgpack
from eventsourcing.persistence import Transcoder

_UUID = 1
_packers = threading.local()


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


class MsgpackTranscoder(Transcoder):
    """Events' attribute dicts as msgpack; datetimes as msgpack timestamps (UTC)."""

    def encode(self, obj: Any) -> bytes:
        # msgpack.packb makes (and frees) a Packer and its buffer per call; a Packer per thread
        # gives the same bytes (it resets after each pack, and after a failed one) in a third
        # of the time of a small event's packb.
        try:
            packer = _packers.packer
        except AttributeError:
            packer = _packers.packer = msgpack.Packer(default=_default, datetime=True,
                                                      use_bin_type=True)
        return packer.pack(obj)

    def decode(self, data: bytes) -> Any:
        return msgpack.unpackb(data, **_UNPACKING)

    def unpacker(self, data: bytes) -> msgpack.Unpacker:
        """An Unpacker over `data` whose items decode as decode() decodes them (for reading a
        state part by part: its map header, keys, values, and values skipped as bytes)."""
        unpacker = msgpack.Unpacker(**_UNPACKING, max_buffer_size=max(len(data), 1))
        unpacker.feed(data)
        return unpacker

