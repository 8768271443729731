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
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import multiprocessing
import os
import signal
import socket
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvicorn

from api.access_log import ENV_FORMAT, ENV_LEVEL, logging_config

APP = "api.server:create_app"
HTTP = "api.transport:NoDelayHTTPProtocol"
BACKLOG = 2048
ACCEPT_POLL_S = 0.2  # how often the accepting parent looks at its workers and at signals
RESTART_PAUSE_S = 1.0  # between restarts of a worker that keeps exiting
STOP_GRACE_S = 10.0
log = logging.getLogger("carbon_ledger.serve")


def serve(*, host: str, port: int, workers: int, log_level: str, log_format: str = "json",
          banner: str = "") -> int:
    """Serve the app; every process logs to standard error in `log_format` (the workers read
    it from the environment, set here before they start)."""
    os.environ[ENV_FORMAT], os.environ[ENV_LEVEL] = log_format, log_level
    logging.config.dictConfig(logging_config(log_format, log_level))
    if banner:
        log.info(banner)
    if workers <= 1:
        uvicorn.run(APP, host=host, port=port, **_settings())
        return 0
    return Dispatcher(host, port, workers, log_level).run()


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
    log lines in the format asked for."""
    fmt, level = os.environ.get(ENV_FORMAT, "json"), os.environ.get(ENV_LEVEL, "info")
    return {"factory": True, "access_log": False, "http": HTTP, "log_level": level,
            "log_config": logging_config(fmt, level)}


def _config(host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(APP, host=host, port=port, **_settings())


# The workers -------------------------------------------------------------------------------------

class _HandedServer(uvicorn.Server):
    """A uvicorn server that serves the connections handed to it over `channel`."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket) -> None:
        super().__init__(config)
        self.channel = channel

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the app's lifespan; no listening socket
        config, loop = self.config, asyncio.get_running_loop()

        def protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state,
                _loop=_loop)

        def receive() -> None:
            try:
                data, fds, _, _ = socket.recv_fds(self.channel, 1, 1)
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
                loop.create_task(loop.connect_accepted_socket(protocol, connection))

        self.channel.setblocking(False)
        loop.add_reader(self.channel.fileno(), receive)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
        except (ValueError, OSError):  # already removed, or the channel is closed
            pass
        await super().shutdown(sockets=sockets)


def _worker(channel: socket.socket, host: str, port: int, log_level: str) -> None:
    _HandedServer(_config(host, port, log_level), channel).run()


# The accepting parent ------------------------------------------------------------------------------

class Dispatcher:
    """Accepts connections and hands them to `workers` worker processes in turn."""

    def __init__(self, host: str, port: int, workers: int, log_level: str) -> None:
        self.host, self.port, self.workers, self.log_level = host, port, workers, log_level
        self.context = multiprocessing.get_context("spawn")
        self.slots: list[tuple[Any, socket.socket]] = []  # (process, the parent's end)
        self.next = 0
        self.stopping = False
        self.last_restart = 0.0

    def _start(self) -> tuple[Any, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = self.context.Process(target=_worker, daemon=False,
                                       args=(theirs, self.host, self.port, self.log_level))
        process.start()
        theirs.close()
        return process, ours

    def _restart(self, i: int) -> None:
        process, channel = self.slots[i]
        channel.close()
        pause = RESTART_PAUSE_S - (time.monotonic() - self.last_restart)
        if pause > 0:
            time.sleep(pause)
        log.warning("worker %s exited (%s); starting another", process.pid, process.exitcode)
        self.slots[i] = self._start()
        self.last_restart = time.monotonic()

    def _hand(self, connection: socket.socket) -> None:
        """Give the connection to the next live worker (restarting any found dead)."""
        for _ in range(2 * len(self.slots)):
            i = self.next
            self.next = (self.next + 1) % len(self.slots)
            process, channel = self.slots[i]
            try:
                socket.send_fds(channel, [b"c"], [connection.fileno()])
                return
            except OSError:  # that worker is gone
                if not self.stopping:
                    self._restart(i)

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
        listener.settimeout(ACCEPT_POLL_S)
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGINT, signal.SIGTERM)}
        log.info("process %s accepts on %s:%s and hands connections to %s workers in turn",
                 os.getpid(), self.host, listener.getsockname()[1], self.workers)
        try:
            self.slots = [self._start() for _ in range(self.workers)]
            while not self.stopping:
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    for i, (process, _channel) in enumerate(self.slots):
                        if not process.is_alive() and not self.stopping:
                            self._restart(i)
                    continue
                except OSError:
                    continue  # interrupted, or a connection reset before it was accepted
                try:
                    self._hand(connection)
                finally:
                    connection.close()  # the worker has its own copy now
        finally:
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
