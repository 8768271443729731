"""Participants and their accounts: role, freezes, trading mandates."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from domain.base import LedgerAggregate, id_memo
from domain.errors import DomainError
from domain.values import Role, a


class Participant(LedgerAggregate):
    id_for = staticmethod(id_memo("participant"))

    class Registered(LedgerAggregate.Created):
        participant_id: str
        name: str
        role: str
        public_key: str
        key_id: str

    def __init__(self, participant_id: str, name: str, role: str, public_key: str, key_id: str,
                 timestamp: datetime) -> None:
        self.participant_id = participant_id
        self.name = name
        self.role = role
        # key id -> {"public_key": text form, "status": active | rotated | revoked,
        #            "valid_from": unix seconds of the record that registered it}
        self.keys: dict[str, dict[str, Any]] = {
            key_id: {"public_key": public_key, "status": ACTIVE,
                     "valid_from": int(timestamp.timestamp())}}
        self.freezes: dict[str, str] = {}  # who froze -> reason
        self.mandates: set[str] = set()  # exchanges allowed to move this holder's units

    @classmethod
    def register(cls, participant_id: str, name: str, role: str, public_key: str, key_id: str,
                 actor: str, command_id: str) -> Participant:
        return cls._create(
            cls.Registered, id=cls.id_for(participant_id), participant_id=participant_id,
            name=name, role=role, public_key=public_key, key_id=key_id, actor=actor,
            command_id=command_id,
        )

    # Keys ------------------------------------------------------------------------------------

    def active_key(self, key_id: str) -> str:
        """The public key of an active key of this participant, or a refusal with the reason."""
        entry = self.keys.get(key_id)
        if entry is None:
            raise DomainError("unknown_key", f"{key_id} is not a key of {self.participant_id}",
                              key_id=key_id, signer=self.participant_id)
        if entry["status"] != ACTIVE:
            raise DomainError("revoked_key", f"key {key_id} of {self.participant_id} is "
                              f"{entry['status']}", key_id=key_id, signer=self.participant_id)
        return entry["public_key"]

    def check_key_time(self, key_id: str, signed_at: int | None, slack_s: int) -> None:
        """Refuse a signature that claims to predate its key's registration (beyond the slack)."""
        valid_from = self.keys[key_id].get("valid_from", 0)
        if signed_at is not None and signed_at + slack_s < valid_from:
            raise DomainError("key_not_yet_valid", f"the signature claims to be made at {signed_at}, "
                              f"before key {key_id} of {self.participant_id} was registered "
                              f"({valid_from})", key_id=key_id, signer=self.participant_id)

    class KeyRotated(LedgerAggregate.Event):
        old_key_id: str
        new_key_id: str
        new_public_key: str

        def apply(self, agg: Participant) -> None:
            if self.old_key_id in agg.keys:
                agg.keys[self.old_key_id]["status"] = ROTATED
            agg.keys[self.new_key_id] = {"public_key": self.new_public_key, "status": ACTIVE,
                                         "valid_from": int(self.timestamp.timestamp())}

    class KeyRevoked(LedgerAggregate.Event):
        key_id: str
        reason: str

        def apply(self, agg: Participant) -> None:
            agg.keys[self.key_id]["status"] = REVOKED

    def current_key_id(self) -> str | None:
        active = [k for k, v in self.keys.items() if v["status"] == ACTIVE]
        return active[-1] if active else None

    def rotate_key(self, new_public_key: str, new_key_id: str, actor: str, command_id: str) -> str:
        if new_key_id in self.keys:
            raise DomainError("already_exists", f"key {new_key_id} was registered for "
                              f"{self.participant_id} before; use a new key", key_id=new_key_id)
        old = self.current_key_id() or ""
        self._emit(self.KeyRotated, actor, command_id, old_key_id=old, new_key_id=new_key_id,
                   new_public_key=new_public_key)
        return old

    def revoke_key(self, key_id: str, reason: str, actor: str, command_id: str) -> None:
        self.active_key(key_id)
        self._emit(self.KeyRevoked, actor, command_id, key_id=key_id, reason=reason)

    @property
    def frozen(self) -> bool:
        return bool(self.freezes)

    def require_role(self, *roles: str, doing: str) -> None:
        if self.role not in roles:
            allowed = " or ".join(a(r) for r in roles)
            raise DomainError(
                "not_authorized",
                f"{self.participant_id} is {a(self.role)}; only {allowed} may {doing}",
                actor=self.participant_id, role=self.role,
            )

    def require_not_frozen(self, doing: str) -> None:
        if self.freezes:
            by = ", ".join(sorted(self.freezes))
            raise DomainError(
                "account_frozen",
                f"account {self.participant_id} is frozen (by {by}); it may not {doing}",
                holder=self.participant_id, frozen_by=sorted(self.freezes),
            )

    def require_mandate(self, exchange: str) -> None:
        if exchange not in self.mandates:
            raise DomainError(
                "no_mandate",
                f"{self.participant_id} has not granted {exchange} a trading mandate",
                holder=self.participant_id, exchange=exchange,
            )

    # Freezes -------------------------------------------------------------------------------

    class Frozen(LedgerAggregate.Event):
        by: str
        reason: str

        def apply(self, agg: Participant) -> None:
            agg.freezes[self.by] = self.reason

    class Unfrozen(LedgerAggregate.Event):
        by: str

        def apply(self, agg: Participant) -> None:
            agg.freezes.pop(self.by, None)

    def freeze(self, by: str, reason: str, actor: str, command_id: str) -> None:
        if by in self.freezes:
            raise DomainError(
                "already_exists", f"{by} has already frozen account {self.participant_id}",
                holder=self.participant_id,
            )
        self._emit(self.Frozen, actor, command_id, by=by, reason=reason)

    def unfreeze(self, by: str, actor: str, command_id: str) -> None:
        if by not in self.freezes:
            holders = ", ".join(sorted(self.freezes)) or "nobody"
            raise DomainError(
                "not_authorized",
                f"{by} has no freeze on account {self.participant_id} to lift (frozen by {holders})",
                holder=self.participant_id,
            )
        self._emit(self.Unfrozen, actor, command_id, by=by)

    # Mandates ------------------------------------------------------------------------------

    class MandateGranted(LedgerAggregate.Event):
        exchange: str

        def apply(self, agg: Participant) -> None:
            agg.mandates.add(self.exchange)

    class MandateRevoked(LedgerAggregate.Event):
        exchange: str

        def apply(self, agg: Participant) -> None:
            agg.mandates.discard(self.exchange)

    def grant_mandate(self, exchange: str, actor: str, command_id: str) -> None:
        if exchange in self.mandates:
            raise DomainError(
                "already_exists", f"{self.participant_id} already mandates {exchange}",
                holder=self.participant_id, exchange=exchange,
            )
        self._emit(self.MandateGranted, actor, command_id, exchange=exchange)

    def revoke_mandate(self, exchange: str, actor: str, command_id: str) -> None:
        self.require_mandate(exchange)
        self._emit(self.MandateRevoked, actor, command_id, exchange=exchange)


ACTIVE, ROTATED, REVOKED = "active", "rotated", "revoked"
OPERATOR_ID = "registry"
ROLES = tuple(r.value for r in Role)
