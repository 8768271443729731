"""Trades settled by exchanges (交易): one record per trade id, so a retried trade never double-posts."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain.base import LedgerAggregate, new_aggregate_id


class Trade(LedgerAggregate):
    @staticmethod
    def id_for(exchange: str, trade_id: str) -> UUID:
        # not aggregate_id's memo: nearly every trade id is asked for once (when it is settled),
        # so a memo would only evict ids that matter
        return new_aggregate_id("trade", exchange, trade_id)

    class Settled(LedgerAggregate.Created):
        trade_id: str
        exchange: str
        seller: str
        buyer: str
        ticket_no: str
        quantity_t: int
        ranges: list
        price_fen: int
        mode: str
        batch_id: str

        def mutate(self, aggregate: Any) -> Trade:
            """The trade, made as Created.mutate makes it (the library's base attributes, then
            what __init__ sets, in that order), straight from the event's fields: __init__ only
            copies them, and every settled transfer makes a trade."""
            assert aggregate is None
            f = self.__dict__
            trade = object.__new__(Trade)
            trade.__dict__ = {
                "_id": f["originator_id"], "_version": f["originator_version"],
                "_created_on": f["timestamp"], "_modified_on": f["timestamp"],
                "_pending_events": [], "trade_id": f["trade_id"], "exchange": f["exchange"],
                "seller": f["seller"], "buyer": f["buyer"], "ticket_no": f["ticket_no"],
                "quantity_t": f["quantity_t"], "ranges": f["ranges"], "price_fen": f["price_fen"],
                "mode": f["mode"], "batch_id": f["batch_id"]}
            return trade

    def __init__(self, trade_id: str, exchange: str, seller: str, buyer: str, ticket_no: str,
                 quantity_t: int, ranges: list, price_fen: int, mode: str, batch_id: str) -> None:
        self.trade_id = trade_id
        self.exchange = exchange
        self.seller = seller
        self.buyer = buyer
        self.ticket_no = ticket_no
        self.quantity_t = quantity_t
        self.ranges = ranges
        self.price_fen = price_fen
        self.mode = mode
        self.batch_id = batch_id

    @classmethod
    def settle(cls, *, actor: str, command_id: str, exchange: str, trade_id: str,
               id: UUID | None = None, **fields) -> Trade:  # noqa: A002
        """The trade's Settled event; `id` is Trade.id_for(exchange, trade_id), when the caller
        has it already."""
        if id is None:
            id = cls.id_for(exchange, trade_id)  # noqa: A001
        fields["actor"] = actor
        fields["command_id"] = command_id
        fields["exchange"] = exchange
        fields["trade_id"] = trade_id
        return cls._create_with(cls.Settled, id, fields)
