"""Who signed a command, with which key, and whether they may: shared by the registry and the auditor.

The registry checks every signature as a command arrives, against the signers' keys as they are
now. The auditor replays the log and makes the same checks against the keys as they were at each
record's position, and batches the Ed25519 verifications over every core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from domain import commands as C
from domain.errors import DomainError
from ledger import keys as K
from ledger.handlers import UnitOfWork
from ledger.signing import (
    ACTOR_TAG,
    CONSENT_TAG,
    WINDOW_FUTURE_S,
    WINDOW_PAST_S,
    Signature,
    SignedCommand,
    check_base,
    parse_base,
)

# The created time of a command's actor signature, and of each consent by party, where
# check_base passed it beforehand (in the audit's reader); None where it refused it, and
# check_base then runs again in authenticate, to refuse it there.
Checked = tuple[int | None, dict[str, int | None]]


def check_bases(signed: SignedCommand, actor_sig: Signature,
                consents: dict[str, Signature]) -> Checked:
    """authenticate's check_base calls for these signatures, made apart from the replay (they
    read nothing but the signed command): each one's created time, or None for a refusal."""
    def checked(sig: Signature, consent: bool) -> int | None:
        try:
            parsed = check_base(sig, body=signed.body, method=signed.method, path=signed.path,
                                consent=consent)
        except DomainError:
            return None
        return parsed.params["created"]  # type: ignore[no-any-return]

    return checked(actor_sig, False), {party: checked(sig, True) for party, sig in consents.items()}


@dataclass(frozen=True)
class SignatureJob:
    """One Ed25519 verification: the signer's public key over the signature base."""

    signer: str
    key_id: str
    public_key: str
    signature: bytes
    message: bytes


def verify_now(job: SignatureJob) -> None:
    if not K.verify(job.public_key, job.signature, job.message):
        raise DomainError("bad_signature", f"the signature by {job.signer} with key {job.key_id} "
                          "does not verify", signer=job.signer, key_id=job.key_id)


def split_signatures(command: C.Command, signed: SignedCommand
                     ) -> tuple[Signature, dict[str, Signature]]:
    """The actor's signature and the consent signatures by party; refuses anything else."""
    actor_sig: Signature | None = None
    consents: dict[str, Signature] = {}
    for sig in signed.signatures:
        tag = parse_base(sig.base).params.get("tag")
        if tag == ACTOR_TAG and sig.signer == command.actor and actor_sig is None:
            actor_sig = sig
        elif tag == CONSENT_TAG and sig.signer not in consents:
            consents[sig.signer] = sig
        else:
            raise DomainError("bad_signature", f"unexpected signature by {sig.signer} (tag {tag!r}); "
                              "a command carries one actor signature and at most one consent per "
                              "party")
    if actor_sig is None:
        raise DomainError("unsigned", f"the command carries no signature by its actor {command.actor}",
                          actor=command.actor)
    return actor_sig, consents


def authenticate(uow: UnitOfWork, command: C.Command, signed: SignedCommand, actor_sig: Signature,
                 consents: dict[str, Signature], *, now: int,
                 verify: Callable[[SignatureJob], None], checked: Checked | None = None) -> None:
    """Check every signature under the signer's current key, the time window and the role.

    `now` is the ledger's clock when the command arrived (for the auditor: the record's time).
    `checked`: check_bases(signed, actor_sig, consents), when it was made beforehand.
    """
    actor_base, consent_bases = checked if checked is not None else (None, {})
    if command.name == "initialise":
        # The genesis record is self-signed: it introduces the operator's key.
        public = command["public_key"]
        if actor_sig.key_id != K.key_id(public):
            raise DomainError("unknown_key", "the genesis command must be signed with the operator "
                              "key it registers")
    else:
        actor = uow.participant(command.actor)
        public = actor.active_key(actor_sig.key_id)
        C.check_permission(command.name, actor.participant_id, actor.role)
    created = _check(actor_sig, signed, public, consent=False, now=now, verify=verify,
                     created=actor_base)
    if command.name != "initialise":
        actor.check_key_time(actor_sig.key_id, created, WINDOW_PAST_S + WINDOW_FUTURE_S)
    needed = _consenting_parties(uow, command)
    for party, key_of in needed:
        sig = consents.get(party)
        if sig is None:
            raise DomainError("consent_missing", f"{command.name} needs the consent signature of "
                              f"{party}", party=party)
        _check(sig, signed, key_of(sig), consent=True, now=now, verify=verify,
               created=consent_bases.get(party))
    unexpected = set(consents) - {party for party, _ in needed}
    if unexpected:
        raise DomainError("bad_signature", f"{command.name} takes no consent signature from "
                          f"{', '.join(sorted(unexpected)) or 'an unknown key'}")


def _created(sig: Signature) -> int | None:
    created = parse_base(sig.base).params.get("created")
    return created if isinstance(created, int) else None


def _consenting_parties(uow: UnitOfWork, command: C.Command
                        ) -> list[tuple[str, Callable[[Signature], str]]]:
    """(party, the public key its consent must be signed with) for each consent a command needs."""
    if command.name == "pledge":
        pledgor = uow.participant(command["pledgor"])
        def pledgor_key(sig: Signature) -> str:
            public = pledgor.active_key(sig.key_id)
            pledgor.check_key_time(sig.key_id, _created(sig), WINDOW_PAST_S + WINDOW_FUTURE_S)
            return public

        return [(pledgor.participant_id, pledgor_key)]
    if command.name == "rotate_key":
        new = command["new_public_key"]

        def new_key(sig: Signature) -> str:
            if sig.key_id != K.key_id(new):
                raise DomainError("consent_missing", "a key rotation must be countersigned by the "
                                  "new key (proof of possession)")
            return new

        return [(command["participant_id"], new_key)]
    return []


def _check(sig: Signature, signed: SignedCommand, public: str, *, consent: bool, now: int,
           verify: Callable[[SignatureJob], None], created: int | None = None) -> int:
    """The signature's checks but the Ed25519 verification, which goes to `verify`; its created
    time. `created`: the created time when check_base passed it beforehand (see Checked)."""
    if created is None:
        created = check_base(sig, body=signed.body, method=signed.method, path=signed.path,
                             consent=consent).params["created"]
    if not now - WINDOW_PAST_S <= created <= now + WINDOW_FUTURE_S:
        when = (f"{now - created} s before" if created <= now else f"{created - now} s after")
        raise DomainError("stale_signature", f"the signature by {sig.signer} was created at {created}, "
                          f"{when} the ledger's clock ({now}); accepted: {WINDOW_PAST_S} s before to "
                          f"{WINDOW_FUTURE_S} s after", created=created, now=now)
    verify(SignatureJob(sig.signer, sig.key_id, public, sig.signature, sig.base.encode("utf-8")))
    return created
