"""`carbon-ledger serve --workers N`: N uvicorn worker processes fed connections in turn.

uvicorn's own multi-process mode shares one listening socket between its workers, and the first
worker to wake accepts every connection that is pending. Clients that connect together and keep
their connections open (an exchange's or a bank's few keep-alive connections) can then all land
on one worker while the others idle: two clients posting batches were served by one worker in
three runs out of four. SO_REUSEPORT does not fix it either: the kernel spreads connections by a
hash, and two connections share a worker half the time.

So the parent process accepts, and hands each connection to the next worker in turn, over a
Unix socket (SCM_RIGHTS). A worker is a uvicorn server with no listening socket of its own: it
serves the connections it is given. The parent restarts a worker that exits, and on SIGINT or
SIGTERM stops accepting and stops the workers (each finishes the requests in flight).

The parent also holds the connection limits across its workers (api/transport.py holds them in
each process): it counts the connections it has handed out, in all and per client address, and
each worker tells it over the same Unix socket when one of them closes. A connection past a
limit is answered 503 too_many_connections by the parent and closed, never handed out.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import logging.config
import multiprocessing
import os
import selectors
import signal
import socket
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvicorn

from api import transport
from api.access_log import ENV_FORMAT, ENV_LEVEL, logging_config
from api.limits import Limits
from api.transport import connection_cap, problem_response, raise_descriptor_limit

APP = "api.server:create_app"
HTTP = "api.transport:EdgeHTTPProtocol"
BACKLOG = 2048
ACCEPT_POLL_S = 0.2  # how often the accepting parent looks at its workers and at signals
ACCEPT_BURST = 64  # connections accepted in a row before the parent reads its workers' news
RESTART_PAUSE_S = 1.0  # between restarts of a worker that keeps exiting
STOP_GRACE_S = 10.0
log = logging.getLogger("carbon_ledger.serve")


def serve(*, host: str, port: int, workers: int, log_level: str, log_format: str = "json",
          banner: str = "", limits: Limits | None = None) -> int:
    """Serve the app within `limits`; every process logs to standard error in `log_format`
    (the workers read it from the environment, set here before they start)."""
    limits = limits or Limits()
    os.environ[ENV_FORMAT], os.environ[ENV_LEVEL] = log_format, log_level
    logging.config.dictConfig(logging_config(log_format, log_level))
    if banner:
        log.info(banner)
    raise_descriptor_limit()  # inherited by the workers
    if workers <= 1:
        transport.configure(limits)
        uvicorn.run(APP, host=host, port=port, timeout_keep_alive=limits.keep_alive_s,
                    **_settings())  # type: ignore[arg-type]
        return 0
    return Dispatcher(host, port, workers, log_level, limits).run()


def redacted(url: str) -> str:
    """A database URL fit for a log: its password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _settings() -> dict[str, Any]:
    """uvicorn's settings: its own access log off (the app writes one line a request), its
    log lines in the format asked for, and no WebSocket protocol (the API has no WebSocket
    routes, and a connection upgraded to one would leave the edge's limits in api/transport.py
    behind)."""
    fmt, level = os.environ.get(ENV_FORMAT, "json"), os.environ.get(ENV_LEVEL, "info")
    return {"factory": True, "access_log": False, "http": HTTP, "ws": "none", "log_level": level,
            "log_config": logging_config(fmt, level)}


def _config(host: str, port: int, log_level: str, limits: Limits) -> uvicorn.Config:
    return uvicorn.Config(APP, host=host, port=port,
                          timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]
                          **_settings())


# The workers -------------------------------------------------------------------------------------

class _HandedServer(uvicorn.Server):
    """A uvicorn server that serves the connections handed to it over `channel`, and tells the
    parent over it when each one closes (b"-" and the id the parent gave it)."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket, limits: Limits) -> None:
        super().__init__(config)
        self.channel = channel
        self.limits = limits
        self.untold: deque[bytes] = deque()  # closings the channel had no room for yet

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the app's lifespan; no listening socket
        config, loop = self.config, asyncio.get_running_loop()
        transport.configure(self.limits, released=lambda p: self.tell(p.handed_id))

        def protocol(handed_id: bytes) -> asyncio.Protocol:
            made = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state,
                _loop=loop)
            made.handed_id = handed_id
            return made

        def receive() -> None:
            try:
                data, fds, _, _ = socket.recv_fds(self.channel, 64, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data and not fds:  # the parent is gone: stop taking connections
                loop.remove_reader(self.channel.fileno())
                self.should_exit = True
                return
            for fd in fds:
                connection = socket.socket(fileno=fd)
                handed_id = data[1:]
                task = loop.create_task(loop.connect_accepted_socket(
                    lambda i=handed_id: protocol(i), connection))
                task.add_done_callback(lambda t, i=handed_id: self._made(t, i))

        self.channel.setblocking(False)
        loop.add_reader(self.channel.fileno(), receive)

    def _made(self, task: asyncio.Task[Any], handed_id: bytes) -> None:
        if task.cancelled() or task.exception() is not None:  # it never became a connection
            self.tell(handed_id)

    def tell(self, handed_id: bytes | None) -> None:
        """Tell the parent that a connection it handed here is closed."""
        if handed_id is None:
            return
        self.untold.append(b"-" + handed_id)
        self._flush()

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self.untold:
            try:
                self.channel.send(self.untold[0])
            except BlockingIOError:
                loop.add_writer(self.channel.fileno(), self._flush)
                return
            except OSError:  # the parent is gone: nobody to tell
                self.untold.clear()
                break
            self.untold.popleft()
        try:
            loop.remove_writer(self.channel.fileno())
        except (ValueError, OSError):
            pass

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
        except (ValueError, OSError):  # already removed, or the channel is closed
            pass
        await super().shutdown(sockets=sockets)


def _worker(channel: socket.socket, host: str, port: int, log_level: str, limits: Limits) -> None:
    _HandedServer(_config(host, port, log_level, limits), channel, limits).run()


# The accepting parent ------------------------------------------------------------------------------

class Dispatcher:
    """Accepts connections and hands them to `workers` worker processes in turn, within the
    connection limits."""

    def __init__(self, host: str, port: int, workers: int, log_level: str,
                 limits: Limits | None = None) -> None:
        self.host, self.port, self.workers, self.log_level = host, port, workers, log_level
        self.limits = limits or Limits()
        self.context = multiprocessing.get_context("spawn")
        self.slots: list[tuple[Any, socket.socket]] = []  # (process, the parent's end)
        self.handed: list[dict[bytes, str]] = []  # per worker: id -> client of each connection open
        self.open = 0
        self.per_client: dict[str, int] = {}
        self.ids = itertools.count(1)
        self.next = 0
        self.stopping = False
        self.last_restart = 0.0
        self.selector = selectors.DefaultSelector()
        self.cap = connection_cap(self.limits)
        self.refusals = transport.Refusals()

    def _start(self) -> tuple[Any, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = self.context.Process(target=_worker, daemon=False,
                                       args=(theirs, self.host, self.port, self.log_level,
                                             self.limits))
        process.start()
        theirs.close()
        ours.setblocking(False)  # a worker that does not read is skipped, not waited for
        return process, ours

    def _open_slot(self, i: int) -> None:
        process, channel = self._start()
        if i < len(self.slots):
            self.slots[i] = (process, channel)
        else:
            self.slots.append((process, channel))
            self.handed.append({})
        self.selector.register(channel, selectors.EVENT_READ, i)

    def _restart(self, i: int) -> None:
        process, channel = self.slots[i]
        try:
            self.selector.unregister(channel)
        except (KeyError, ValueError):
            pass
        channel.close()
        for client in self.handed[i].values():  # its connections died with it
            self._forget(client)
        self.handed[i].clear()
        pause = RESTART_PAUSE_S - (time.monotonic() - self.last_restart)
        if pause > 0:
            time.sleep(pause)
        log.warning("worker %s exited (%s); starting another", process.pid, process.exitcode)
        self._open_slot(i)
        self.last_restart = time.monotonic()

    def _admit(self, client: str) -> str | None:
        """Count a connection in; or the sentence refusing it."""
        cap = self.cap
        if self.open >= cap:
            return transport.busy_detail(client, self.open, cap, per_client=False)
        most = self.limits.max_per_client
        if most > 0 and self.per_client.get(client, 0) >= most:
            return transport.busy_detail(client, self.per_client[client], most, per_client=True)
        self.open += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        return None

    def _forget(self, client: str) -> None:
        self.open -= 1
        n = self.per_client.get(client, 1) - 1
        if n > 0:
            self.per_client[client] = n
        else:
            self.per_client.pop(client, None)

    def _hand(self, connection: socket.socket, client: str) -> bool:
        """Give the connection to the next live worker that has room for it (restarting any
        found dead); False if none took it."""
        handed_id = next(self.ids).to_bytes(8, "big")
        for _ in range(2 * len(self.slots)):
            i = self.next
            self.next = (self.next + 1) % len(self.slots)
            process, channel = self.slots[i]
            try:
                socket.send_fds(channel, [b"c" + handed_id], [connection.fileno()])
            except BlockingIOError:  # this worker has not taken the last ones yet
                continue
            except OSError:  # that worker is gone
                if not self.stopping:
                    self._restart(i)
                continue
            self.handed[i][handed_id] = client
            return True
        return False

    def _news(self, i: int) -> None:
        """Read what worker i has told: the connections it closed."""
        _process, channel = self.slots[i]
        while True:
            try:
                message = channel.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message = b""
            if not message:  # the worker is gone: the liveness check restarts it
                try:
                    self.selector.unregister(channel)
                except (KeyError, ValueError):
                    pass
                return
            client = self.handed[i].pop(message[1:], None)
            if message[:1] == b"-" and client is not None:
                self._forget(client)

    def _refuse(self, connection: socket.socket, detail: str) -> None:
        """Answer 503 and close, without handing the connection to anyone."""
        self.refusals.note("too_many_connections", detail)
        try:
            connection.setblocking(False)
            connection.send(problem_response("too_many_connections", detail, retry_after=1))
            connection.shutdown(socket.SHUT_WR)
            try:  # what the client has sent already: read, so that closing does not reset
                connection.recv(65536)
            except OSError:
                pass
        except OSError:
            pass

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                connection, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # a connection reset before it was accepted, or out of descriptors
                return
            try:
                client = str(address[0]) if isinstance(address, tuple) else ""
                refusal = self._admit(client)
                if refusal is not None:
                    self._refuse(connection, refusal)
                elif not self._hand(connection, client):
                    self._forget(client)
                    self._refuse(connection, "every worker is busy taking connections; retry later")
            finally:
                connection.close()  # the worker has its own copy now

    def _stop(self, _signum: int, _frame: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.port))
        except OSError as e:
            listener.close()
            log.error("cannot listen on %s:%s: %s", self.host, self.port, e.strerror or e)
            return 1
        listener.listen(BACKLOG)
        listener.setblocking(False)
        self.cap = connection_cap(self.limits)
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGINT, signal.SIGTERM)}
        log.info("process %s accepts on %s:%s and hands connections to %s workers in turn",
                 os.getpid(), self.host, listener.getsockname()[1], self.workers)
        try:
            for i in range(self.workers):
                self._open_slot(i)
            self.selector.register(listener, selectors.EVENT_READ, None)
            checked = time.monotonic()
            while not self.stopping:
                for key, _ in self.selector.select(ACCEPT_POLL_S):
                    if key.data is None:
                        self._accept(listener)
                    else:
                        self._news(key.data)
                if time.monotonic() - checked >= ACCEPT_POLL_S:
                    checked = time.monotonic()
                    for i, (process, _channel) in enumerate(self.slots):
                        if not process.is_alive() and not self.stopping:
                            self._restart(i)
        finally:
            self.selector.close()
            listener.close()
            for process, _channel in self.slots:
                if process.is_alive():
                    process.terminate()  # SIGTERM: uvicorn finishes the requests in flight
            deadline = time.monotonic() + STOP_GRACE_S
            for process, channel in self.slots:
                process.join(max(0.0, deadline - time.monotonic()))
                if process.is_alive():
                    process.kill()
                    process.join()
                channel.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 0
