"""uvicorn's HTTP protocol, with Nagle's algorithm off on every connection.

With `--workers N`, uvicorn hands each worker a listening socket it bound itself, and on Linux
the connections accepted from it do not get TCP_NODELAY (uvicorn issue #3149). Every keep-alive
request after the first then waits for the client's delayed ACK: about 40 ms each. Setting the
option as each connection is made restores the single-worker latency.
"""

from __future__ import annotations

import asyncio
import socket

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class NoDelayHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not a TCP socket after all: nothing to do
                pass
        super().connection_made(transport)
