"""Trades settled by exchanges (交易): one record per trade id, so a retried trade never double-posts."""

from __future__ import annotations

from domain.base import LedgerAggregate, aggregate_id


class Trade(LedgerAggregate):
    @staticmethod
    def id_for(exchange: str, trade_id: str):
        return aggregate_id("trade", exchange, trade_id)

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
    def settle(cls, *, actor: str, command_id: str, exchange: str, trade_id: str, **fields) -> Trade:
        return cls._create(cls.Settled, id=cls.id_for(exchange, trade_id), actor=actor,
                           command_id=command_id, exchange=exchange, trade_id=trade_id, **fields)
