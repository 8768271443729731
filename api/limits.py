"""The limits of `carbon-ledger serve` on what a connection may hold, and their options.

Kept apart from api.transport (which needs uvicorn and httptools) so that the command line can
offer the options without loading the server.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What a connection may hold and for how long (see docs/operations.md, "Limits")."""

    max_head_bytes: int = 32 * 1024  # a request's line and headers together
    max_field_bytes: int = 8 * 1024  # one header line, name and value
    max_fields: int = 100  # header lines in one request
    keep_alive_s: float = 5.0  # a connection with no request begun
    head_s: float = 10.0  # from a request's first byte to the end of its headers
    body_s: float = 30.0  # from the end of the headers to the end of the body
    max_connections: int = 4096  # open at once, in all (0: as many as descriptors allow)
    max_per_client: int = 256  # open at once from one client address (0: no limit)
    linger_s: float = 2.0  # reading and discarding after a response that closes mid-body


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """`serve`'s options for the connection limits (docs/operations.md, "Limits")."""
    d = Limits()
    group = parser.add_argument_group("connection limits")
    group.add_argument("--max-connections", type=_count, default=d.max_connections,
                       metavar="N", help=f"connections open at once (default {d.max_connections}; "
                       "0: as many as the descriptor limit allows)")
    group.add_argument("--max-connections-per-client", type=_count, default=d.max_per_client,
                       metavar="N", help="connections open at once from one client address "
                       f"(default {d.max_per_client}; 0: no limit, e.g. behind a proxy)")
    group.add_argument("--keep-alive-timeout", type=_seconds, default=d.keep_alive_s, metavar="S",
                       help=f"close a connection idle this long (default {d.keep_alive_s:g})")
    group.add_argument("--header-timeout", type=_seconds, default=d.head_s, metavar="S",
                       help=f"a request's headers must arrive within S (default {d.head_s:g})")
    group.add_argument("--body-timeout", type=_seconds, default=d.body_s, metavar="S",
                       help=f"a request's body must arrive within S (default {d.body_s:g})")


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(max_connections=args.max_connections, max_per_client=args.max_connections_per_client,
                  keep_alive_s=args.keep_alive_timeout, head_s=args.header_timeout,
                  body_s=args.body_timeout)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{value:g} s: a timeout is more than 0 s and at most "
                                         "3600 s")
    return value
