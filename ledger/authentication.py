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
from domain.insurance import Claim, Policy
from domain.participant import Participant
from domain.values import HOLDING_ROLES, PHYSICAL_PERILS, Role
from ledger import keys as K
from ledger.handlers import UnitOfWork, rules_edition
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


def consent_parties(uow: UnitOfWork, command: C.Command) -> list[str]:
    """Who must sign a consent to this command, as the state in `uow` stands (for a client
    that signs for several parties: the demo, the tests, `carbon-ledger submit`)."""
    return [party for party, _ in _consenting_parties(uow, command)]


def _party_key(party: Participant) -> Callable[[Signature], str]:
    """The public key a registered party's consent must be signed with: an active key of its,
    registered before the signature claims to be made."""
    def key_of(sig: Signature) -> str:
        public = party.active_key(sig.key_id)
        party.check_key_time(sig.key_id, _created(sig), WINDOW_PAST_S + WINDOW_FUTURE_S)
        return public

    return key_of


# The consents rules edition 2 adds: they depend on the state, so they are looked up then.
_EDITION_2_CONSENTS = frozenset({"bind_policy", "approve_claim", "cancel_units"})
# The commands that may need a consent by a registered party (a key rotation's is its new key's).
CONSENTED = frozenset({"pledge", *_EDITION_2_CONSENTS})


def _consenting_parties(uow: UnitOfWork, command: C.Command
                        ) -> list[tuple[str, Callable[[Signature], str]]]:
    """(party, the public key its consent must be signed with) for each consent a command needs."""
    if command.name == "pledge":
        pledgor = uow.participant(command["pledgor"])
        return [(pledgor.participant_id, _party_key(pledgor))]
    if command.name in _EDITION_2_CONSENTS and rules_edition(uow, command) >= 2:
        return [(p.participant_id, _party_key(p)) for p in _edition_2_parties(uow, command)]
    if command.name == "rotate_key":
        new = command["new_public_key"]

        def new_key(sig: Signature) -> str:
            if sig.key_id != K.key_id(new):
                raise DomainError("consent_missing", "a key rotation must be countersigned by the "
                                  "new key (proof of possession)")
            return new

        return [(command["participant_id"], new_key)]
    return []


def _edition_2_parties(uow: UnitOfWork, command: C.Command) -> list[Participant]:
    """Rules edition 2's consents: the insured's to a policy over its units; and the consent of
    every court that froze an account to the cancellation of its units, by an insured physical
    loss or by the issuer. Where the command names what does not exist (or cannot hold units),
    none: its handler refuses it with the code for that."""
    if command.name == "bind_policy":
        insured = uow.find(Participant, Participant.id_for(command["insured"]))
        return [insured] if insured is not None and insured.role in HOLDING_ROLES else []
    if command.name == "approve_claim":
        claim = uow.find(Claim, Claim.id_for(command["claim_id"]))
        policy = claim and uow.find(Policy, Policy.id_for(claim.policy_id))
        if policy is None or claim.peril not in PHYSICAL_PERILS:
            return []
        holder_id = policy.insured
    else:  # cancel_units
        holder_id = command["holder"]
    holder = uow.find(Participant, Participant.id_for(holder_id))
    if holder is None:
        return []
    return [court for court in (uow.participant(by) for by in sorted(holder.freezes))
            if court.role == Role.COURT]


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
