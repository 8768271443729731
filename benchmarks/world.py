"""A small registry to post transfers into, and the transfers themselves.

A *lane* is one exchange, two holders that gave it a trading mandate and one ticket owned by the
first. Transfers on a lane go back and forth (A->B q t, then B->A the same q t), so every
transfer is valid however many are posted and the ticket's blocks stay few: the figures measure
the write path, not an ever more fragmented ticket.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ledger.application import Registry

TICKET_T = 1_000_000


@dataclass
class Lane:
    exchange: str
    a: str
    b: str
    ticket_no: str
    _flip: bool = False
    _q: int = 1
    _n: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    def next_transfer(self, tag: str) -> dict[str, Any]:
        """The args of the lane's next transfer command (trade ids unique per lane and tag)."""
        if not self._flip:
            self._q = self.rng.randint(1, 50)
            seller, buyer = self.a, self.b
        else:
            seller, buyer = self.b, self.a
        self._flip = not self._flip
        self._n += 1
        return {"trade_id": f"{tag}-{self.ticket_no}-{self._n}", "seller": seller, "buyer": buyer,
                "ticket_no": self.ticket_no, "quantity_t": self._q,
                "price": f"{self.rng.randint(800, 9000) // 100}.{self.rng.randint(0, 99):02d}",
                "mode": self.rng.choice(["negotiated", "auction", "listing"])}


def make_lanes(exchanges: int = 1, lanes_per_exchange: int = 8) -> list[Lane]:
    """The lanes (no registry needed: the baselines take the same transfers)."""
    return [Lane(f"exchange-{e}", f"h-{e}-{i}-a", f"h-{e}-{i}-b", f"T-{1000 * e + i:07d}",
                 rng=random.Random(1000 * e + i))
            for e in range(exchanges) for i in range(lanes_per_exchange)]


def setup(app: Registry, lanes: list[Lane], origin: str = "bench.carbon-ledger/harness") -> None:
    """Initialise an empty registry (signed by its keyring) and open the lanes in it."""
    s = app.submit
    s("initialise", "registry", "init", {"origin": origin, "operator_id": "registry",
                                         "name": "bench operator"})
    s("register_participant", "registry", "reg/issuer", {"participant_id": "issuer",
                                                         "name": "issuer", "role": "issuer"})
    for ex in sorted({lane.exchange for lane in lanes}):
        s("register_participant", "registry", f"reg/{ex}", {"participant_id": ex, "name": ex,
                                                            "role": "exchange"})
    for lane in lanes:
        for h in (lane.a, lane.b):
            s("register_participant", "registry", f"reg/{h}", {"participant_id": h,
                                                               "name": h, "role": "holder"})
            s("grant_mandate", h, f"mandate/{h}", {"holder": h, "exchange": lane.exchange})
        no = lane.ticket_no
        s("register_project", "issuer", f"proj/{no}", {
            "project_id": f"P-{no}", "name": f"forest {no}", "owner": lane.a, "county": "三明",
            "area_mu": 10_000, "standard": "FFCER", "methodology": "m"})
        s("issue_ticket", "issuer", f"issue/{no}", {
            "ticket_no": no, "project_id": f"P-{no}", "standard": "FFCER",
            "period_start": "2020-01-01", "period_end": "2024-12-31", "quantity_t": TICKET_T})


def transfers(lanes: list[Lane], tag: str) -> Iterator[tuple[Lane, dict[str, Any]]]:
    """An endless round-robin of transfers over the lanes."""
    for lane in itertools.cycle(lanes):
        yield lane, lane.next_transfer(tag)
