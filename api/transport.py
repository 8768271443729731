"""The HTTP edge: uvicorn's httptools protocol, with the limits a server open to anyone needs.

uvicorn bounds none of what a client may make a connection hold: httptools gathers a header of
any length (a 32 MB header is parsed), a connection that sends nothing is never closed (the
keep-alive timeout is armed only after a response), a request whose headers or body come one
byte every 0.8 s is served forever, and one client may open connections until the process runs
out of descriptors and every other client is locked out. So each connection here:

- is counted, in the process and per client address: past `max_connections` or
  `max_per_client` it is answered 503 too_many_connections at once and closed, so descriptors
  stay free for others;
- is closed when idle: `keep_alive_s` after it opens or after its last response, with no
  request begun;
- must send a request's line and headers within `head_s` of its first byte, and its body within
  `body_s` of the end of its headers (else 408 request_timeout, and closed);
- may send at most `max_head_bytes` of request line and headers, `max_field_bytes` in one
  header line and `max_fields` header lines (else 431 headers_too_large, and closed).

A response that closes the connection while the request's body is still arriving (a 413 for a
body past its cap) half-closes it and reads and discards what comes for up to `linger_s`, so that
the client reads the answer instead of a connection reset.

It also turns Nagle's algorithm off: with `--workers N`, uvicorn hands each worker a listening
socket it bound itself, and on Linux the connections accepted from it do not get TCP_NODELAY
(uvicorn issue #3149), so every keep-alive request after the first waited about 40 ms for the
client's delayed ACK.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from api.limits import Limits
from api.problems import PROBLEM_TYPE, status_of
from domain.errors import CODES

# Descriptors a server process keeps for itself beyond its connections: the store's pool, the
# listening socket, log and key files, the worker channels.
RESERVED_DESCRIPTORS = 128
# Refused connections that may linger at once (beyond these, a refusal closes at once).
MAX_LINGERING = 256
REFUSALS_LOG_S = 10.0  # at most one log line this often about what the edge refused

log = logging.getLogger("carbon_ledger.edge")


def raise_descriptor_limit() -> int:
    """Raise this process's descriptor limit to its hard limit; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # not allowed here: keep what we have
            pass
    return soft


def connection_cap(limits: Limits) -> int:
    """How many connections a process may hold: the configured cap, below its descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = max(16, soft - RESERVED_DESCRIPTORS) if soft != resource.RLIM_INFINITY else 1 << 30
    return min(limits.max_connections, room) if limits.max_connections > 0 else room


def problem_response(code: str, detail: str, *, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 response with an RFC 9457 problem (as api.problems renders them) that
    closes the connection: for refusals made before any request reaches the application."""
    status = status_of(code)
    body = json.dumps({"type": PROBLEM_TYPE + code, "title": CODES[code], "status": status,
                       "code": code, "detail": detail}, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")
    head = [STATUS_LINE[status], b"content-type: application/problem+json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n"]
    if retry_after is not None:
        head.append(b"retry-after: " + str(retry_after).encode("ascii") + b"\r\n")
    return b"".join(head) + b"\r\n" + body


def busy_detail(client: str | None, open_now: int, cap: int, per_client: bool) -> str:
    if per_client:
        return (f"{client} has {open_now} connections open to this server; at most {cap} are "
                "accepted from one address: reuse them (keep-alive) or retry later")
    return (f"the server has {open_now} connections open; at most {cap} are accepted: "
            "retry later")


class Refusals:
    """What the edge refused, counted by code: under an attack a line per refusal would flood
    the log, so one line sums them up at most every REFUSALS_LOG_S."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.logged = -REFUSALS_LOG_S

    def note(self, code: str, detail: str) -> None:
        self.counts[code] = self.counts.get(code, 0) + 1
        now = time.monotonic()
        if now - self.logged >= REFUSALS_LOG_S:
            summary = ", ".join(f"{n} {c}" for c, n in sorted(self.counts.items()))
            log.warning("refused before the application: %s (the last: %s)", summary, detail)
            self.counts.clear()
            self.logged = now


class Edge:
    """One process's limits and its count of open connections (in all and per client)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.configure(limits or Limits())

    def configure(self, limits: Limits, released: Callable[[Any], None] | None = None) -> None:
        self.limits = limits
        self.cap = connection_cap(limits)
        self.released = released  # told of each connection closed (a handed worker's parent)
        self.open = 0
        self.per_client: dict[str, int] = {}
        self.lingering = 0
        self.refusals = Refusals()

    def admit(self, client: str | None) -> str | None:
        """Count a new connection in; or the sentence refusing it."""
        if self.open >= self.cap:
            return busy_detail(client, self.open, self.cap, per_client=False)
        if client is not None and self.limits.max_per_client > 0:
            n = self.per_client.get(client, 0)
            if n >= self.limits.max_per_client:
                return busy_detail(client, n, self.limits.max_per_client, per_client=True)
            self.per_client[client] = n + 1
        self.open += 1
        return None

    def release(self, client: str | None) -> None:
        self.open -= 1
        if client is not None and self.limits.max_per_client > 0:
            n = self.per_client.get(client, 1) - 1
            if n > 0:
                self.per_client[client] = n
            else:
                self.per_client.pop(client, None)


EDGE = Edge()  # this process's: configured by api.serving before it serves


def configure(limits: Limits, released: Callable[[Any], None] | None = None) -> None:
    EDGE.configure(limits, released)


class _HeadTooLarge(Exception):
    pass


_IDLE, _HEAD, _BODY = 0, 1, 2


class _ClosingGently:
    """The transport as a request's response cycle sees it: closing it while the request's body
    is still arriving lingers (see EdgeHTTPProtocol.close_after_response)."""

    def __init__(self, protocol: EdgeHTTPProtocol) -> None:
        self._protocol = protocol
        self._transport = protocol.transport

    def close(self) -> None:
        self._protocol.close_after_response()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class EdgeHTTPProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.edge = EDGE
        self.limits = EDGE.limits
        self.handed_id: bytes | None = None  # set by a worker serving handed connections
        self._peer: str | None = None
        self._admitted = False
        self._refused = False
        self._lingers = False
        self._discarding = False
        self._phase = _IDLE
        self._head_bytes = 0
        self._fields = 0
        self._timer: asyncio.TimerHandle | None = None

    # Connections ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not a TCP socket after all: nothing to do
                pass
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) and peer else None
        refusal = self.edge.admit(self._peer)
        if refusal is not None:
            self._refuse_connection(transport, refusal)
            return
        self._admitted = True
        super().connection_made(transport)
        # uvicorn arms its keep-alive timeout only after a response: a connection that never
        # sends a request would stay open for ever.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                            self.timeout_keep_alive_handler)

    def _refuse_connection(self, transport: asyncio.Transport, detail: str) -> None:
        self._refused = True
        self.transport = transport
        self.edge.refusals.note("too_many_connections", detail)
        transport.write(problem_response("too_many_connections", detail, retry_after=1))
        self._linger()

    def _linger(self) -> None:
        """Close after an answer sent before the client has sent all it means to: half-close,
        and drop what comes until the client closes too or `linger_s` has passed, so that it
        reads the answer instead of a connection reset (at once past MAX_LINGERING of them)."""
        transport = self.transport
        if (self._lingers or self.edge.lingering >= MAX_LINGERING or transport.is_closing()
                or not transport.can_write_eof()):
            transport.close()
            return
        self.edge.lingering += 1
        self._lingers = self._discarding = True
        transport.write_eof()
        self._cancel_timer()
        self._timer = self.loop.call_later(self.limits.linger_s, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._lingers:
            self._lingers = False
            self.edge.lingering -= 1
        if self._refused:
            return
        if self._admitted:
            self._admitted = False
            self.edge.release(self._peer)
            if self.edge.released is not None:
                self.edge.released(self)
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:
        if self._refused or self._discarding:
            return None  # the client is done too: close
        return super().eof_received()

    # Reading ----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused or self._discarding:
            return  # the answer is sent; what else comes is dropped unread
        self._unset_keepalive_if_required()
        view = memoryview(data)
        while view:
            if self.transport.is_closing():
                return
            if self._phase == _BODY:
                self._feed(view)
                return
            room = self.limits.max_head_bytes - self._head_bytes
            if room <= 0:
                self._refuse_request("headers_too_large", "the request line and headers are "
                                     f"more than {self.limits.max_head_bytes} bytes; at most "
                                     f"{self.limits.max_head_bytes} are accepted")
                return
            piece, view = view[:room], view[room:]
            self._head_bytes += len(piece)
            self._feed(piece)

    def _feed(self, data: memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _HeadTooLarge):
                self._refuse_request("headers_too_large", str(e.__context__))
            else:
                self._refuse_request("invalid_argument", "the request is not valid HTTP/1.1")
        except httptools.HttpParserError:
            self._refuse_request("invalid_argument", "the request is not valid HTTP/1.1")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def send_400_response(self, msg: str) -> None:  # uvicorn's, for what it refuses itself
        self._refuse_request("invalid_argument", msg)

    def _refuse_request(self, code: str, detail: str, *, linger: bool = True) -> None:
        """Answer a request the application has not seen (or has not answered), and close."""
        self._cancel_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:  # a response is on its way: only closing is left
                self.transport.close()
                return
            cycle.disconnected = True  # the application's answer, if it comes, is dropped
            cycle.message_event.set()
        if not self.transport.is_closing():
            self.edge.refusals.note(code, detail)
            self.transport.write(problem_response(code, detail))
            if linger:
                self._linger()
            else:
                self.transport.close()

    # Parser callbacks: the phases of a request, and what each may take -------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEAD
        self._fields = 0
        self._arm(self.limits.head_s, "headers")

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self.limits.max_field_bytes:
            raise _HeadTooLarge(f"the request target is more than {self.limits.max_field_bytes} "
                                f"bytes; at most {self.limits.max_field_bytes} are accepted")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > self.limits.max_fields:
            raise _HeadTooLarge(f"the request has more than {self.limits.max_fields} header "
                                f"lines; at most {self.limits.max_fields} are accepted")
        if len(name) + len(value) > self.limits.max_field_bytes:
            shown = name[:40].decode("latin-1")
            raise _HeadTooLarge(f"the {shown} header is {len(name) + len(value)} bytes; at most "
                                f"{self.limits.max_field_bytes} are accepted in one header line")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._arm(self.limits.body_s, "body")
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.transport is self.transport:
            self.cycle.transport = _ClosingGently(self)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = _IDLE
        self._head_bytes = 0
        self._cancel_timer()

    # Deadlines ----------------------------------------------------------------------------------

    def _arm(self, seconds: float, what: str) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(seconds, self._expired, what, seconds)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, what: str, seconds: float) -> None:
        self._timer = None
        # A client this slow gets its answer and the connection closes: no lingering for it.
        self._refuse_request("request_timeout", f"the request's {what} did not arrive within "
                             f"{seconds:g} s", linger=False)

    def close_after_response(self) -> None:
        """The response closes the connection: at once, or, while the request's body is still
        arriving, after the client has read it (its FIN, the body's end, or `linger_s`)."""
        if self._phase == _BODY:
            self._linger()
        else:
            self.transport.close()


NoDelayHTTPProtocol = EdgeHTTPProtocol  # its former name
