"""The registry application: one command in, one atomic save out.

Each command is decided against the aggregates it loads (a unit of work), then every aggregate
it changed is saved in one transaction together with a CommandRecord keyed by the command id.
The record makes retries idempotent (same id and content: the first outcome comes back, nothing
is written; same id, other content: `duplicate_command`). The versions of aggregates the command
only read are re-checked inside that transaction (see ledger.store), and a conflict makes the
command be decided again, a bounded number of times.

A process may decide against a state that is behind the store (see _decision_state): a wrong
"yes" is caught by those version checks, and a wrong "no" by the same idea run the other way. A
refusal remembers the version of everything it read (0 for what did not exist), and is only
reported once the store confirms that none of them has moved on; otherwise the command is
decided again, caught up. So a refusal holds at the head of the log, whichever process or host
decided it. A refused request whose signature verified is stored as spent in that same step
(under the write lock), and no write is accepted with a spent signature: the very same signed
request is refused as a `replay` ever after, whatever the state has become.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

from eventsourcing import domain as _library
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    StoredEvent,
    Transcoder,
)

from domain import commands as C
from domain.base import LedgerAggregate, dated
from domain.command import CommandRecord
from domain.errors import DomainError
from domain.genesis import Genesis
from domain.participant import Participant
from domain.trade import Trade
from ledger import keys as K
from ledger.authentication import (
    CONSENTED,
    SignatureJob,
    authenticate,
    consent_parties,
    split_signatures,
    verify_now,
)
from ledger.checkpoints import Checkpointer
from ledger.handlers import Handlers, UnitOfWork
from ledger.merkle import MerkleTree
from ledger.projections import PAGE, SKIPPED_PREFIXES, Progress, Projection
from ledger.signing import (
    WINDOW_FUTURE_S,
    WINDOW_PAST_S,
    Signature,
    SignedCommand,
    check_base,
    parse_base,
    parse_canonical,
    sign_with_keyring,
)
from ledger.store import (
    EPOCH,
    HELD,
    MOVED,
    SPENT,
    Dating,
    SignatureSpent,
    Spent,
    db_url,
    environment,
    leaf_hashes,
    require_registry,
)
from ledger.transcoder import MsgpackTranscoder

MAX_ATTEMPTS = 20
MAX_GROUP = 256  # commands committed together at most (their records share one transaction)
MAX_GROUP_EVENTS = 5_000  # a group takes no further command once it holds this many records
A = TypeVar("A", bound=LedgerAggregate)
T = TypeVar("T")


# Stands for a trade that exists: handlers only ask whether a trade id is taken.
_TRADE_SEEN = object.__new__(Trade)
_TRADE_SEEN.__dict__.update(_version=1, _pending_events=[])


def _fork_from(state: Projection, aggregate_id: UUID) -> LedgerAggregate | None:
    agg = state.aggregates.get(aggregate_id)
    if agg is not None:
        return agg.fork()
    if aggregate_id.hex in state.trade_ids:
        return _TRADE_SEEN
    return None


# The signature checks that passed while a command was decided (public key, signature, signed
# text): when the same request is decided again (after a conflict, or to confirm a refusal at
# the head), a check that passed is not made again; the key's status is checked every time.
Verified = set[tuple[str, bytes, bytes]]


def _signed_until(events: list[Any]) -> int:
    """The latest time (ns) to which these records may be dated with every signature of their
    commands still inside its window (int(time) at most created + WINDOW_PAST_S)."""
    limit = 1 << 80
    for event in events:
        if type(event) is CommandRecord.Accepted:
            for sig in event.signatures:
                created = parse_base(sig["base"]).params.get("created")
                if isinstance(created, int):
                    limit = min(limit, (created + WINDOW_PAST_S + 1) * 1_000_000_000 - 1)
    return limit


class _Pending:
    """A command waiting in the group-commit queue, and then its outcome or its refusal."""

    __slots__ = ("command", "signed", "verified", "outcome", "error", "done")

    def __init__(self, command: C.Command, signed: SignedCommand) -> None:
        self.command = command
        self.signed = signed
        self.verified: Verified = set()
        self.outcome: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.done = False

    def finish(self, *, outcome: dict[str, Any] | None = None,
               error: BaseException | None = None) -> None:
        self.outcome, self.error, self.done = outcome, error, True


def _unavailable(command: C.Command, error: BaseException) -> DomainError:
    return DomainError(
        "store_unavailable", f"the store did not complete command {command.command_id} ({error}); "
        "it may or may not have been recorded: send it again with the same command id (a "
        "recorded command answers with its first outcome)", command_id=command.command_id)


class _Decision(NamedTuple):
    outcome: dict[str, Any]
    changed: list[LedgerAggregate]  # the aggregates the command changed (or created)
    read_set: list[tuple[UUID, int]]  # the versions of those it only read
    events: list[Any]  # what to record: the changed aggregates' events, then the command record
    signature: bytes  # the actor's signature (a write is refused if it is spent)


class _Refused(Exception):  # noqa: N818 - a refusal to confirm, not an error of its own
    """A refusal decided against one state, and what it rests on: the version of everything
    its decision read (0: it did not exist), and the request's signature to store as spent.
    It is reported only once the store confirms it at the head (Registry._confirm)."""

    def __init__(self, error: DomainError, read_set: list[tuple[UUID, int]],
                 spent: Spent | None) -> None:
        super().__init__(error.code)
        self.error = error
        self.read_set = read_set
        self.spent = spent


def _versions_loaded(uow: UnitOfWork) -> list[tuple[UUID, int]]:
    """(id, version as loaded) of every aggregate the unit of work loaded, changed or not (0:
    absent, as is one it created): a refusal can rest on anything its decision looked at."""
    return [(agg_id, 0 if agg is None else agg.version - len(agg._pending_events))
            for agg_id, agg in uow.loaded.items()]


def _replay_of_refused(command: C.Command) -> DomainError:
    return DomainError("replay", f"this signed request for command {command.command_id} was "
                       "refused before; a signature is used once, whatever the outcome: sign the "
                       "command again (new nonce) to have it decided afresh",
                       command_id=command.command_id)


class Registry(Application):
    """The carbon-ticket registry. `execute(command)` is the only way to change it."""

    name = "CarbonLedger"
    env: dict[str, str] = {}  # commands decide against the in-process projection, not a cache

    def __init__(self, url: str | None = None, env: dict[str, str] | None = None, *,
                 keyring: K.Keyring | None = None, clock: Callable[[], float] = time.time,
                 auto_checkpoint: bool = True, group_commit: bool = True,
                 create: bool = True) -> None:
        self.url = db_url(url)
        if not create:  # open a registry that is there, never make one (see require_registry)
            require_registry(self.url)
        self.keyring = keyring
        self.clock = clock
        merged = environment(self.url)
        merged.update(env or {})
        super().__init__(env=merged)
        self._projection: Projection | None = None
        self._projection_lock = threading.Lock()
        self._tree = MerkleTree()
        self._tree_lock = threading.Lock()
        self.checkpointer: Checkpointer | None = None
        self.auto_checkpoint = auto_checkpoint
        self._handlers = Handlers().table()
        self.group_commit = group_commit
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._written_to: int | None = None  # the log's end after this process's last write
        self._last_time = EPOCH  # the latest time a decision of this process to record was dated

    def construct_transcoder(self) -> Transcoder:
        return MsgpackTranscoder()

    # The write path ---------------------------------------------------------------------------

    def execute(self, signed: SignedCommand) -> dict[str, Any]:
        """Verify, decide and record one signed command atomically; return its outcome.

        Raises DomainError for every refusal; nothing is written to the log then. A refusal
        is raised only once it holds at the store's head (see _confirm). Commands that arrive
        together from several threads are decided one after another and committed together
        (group commit): each keeps its own outcome, refusal and log position.
        """
        command = C.parse(parse_canonical(signed.body))
        try:
            if not self.group_commit:
                return self._execute(command, signed)
            return self._in_group(command, signed)
        except (OperationalError, InterfaceError) as e:
            raise _unavailable(command, e) from e

    def _in_group(self, command: C.Command, signed: SignedCommand) -> dict[str, Any]:
        """Queue the command; whichever waiting thread gets the commit lock first runs
        everything queued as one group (see _execute_group)."""
        item = _Pending(command, signed)
        with self._queue_lock:
            self._queue.append(item)
        while not item.done:
            with self._commit_lock:
                if item.done:
                    break
                with self._queue_lock:
                    group, self._queue = self._take(self._queue)
                if group:
                    self._run_group(group)
        if item.error is not None:
            raise item.error
        assert item.outcome is not None
        return item.outcome

    @staticmethod
    def _take(queue: list[_Pending]) -> tuple[list[_Pending], list[_Pending]]:
        """The next group: queued commands in arrival order, each command id at most once (a
        second copy waits for the next group, where it is answered as a retry)."""
        group: list[_Pending] = []
        rest: list[_Pending] = []
        seen: set[str] = set()
        for item in queue:
            cid = item.command.command_id
            if cid in seen or len(group) >= MAX_GROUP:
                rest.append(item)
            else:
                seen.add(cid)
                group.append(item)
        return group, rest

    def _run_group(self, group: list[_Pending]) -> None:
        try:
            self._execute_group(group)
        except BaseException as e:  # noqa: BLE001 - no waiting caller may be left without an answer
            for item in group:
                if not item.done:
                    item.finish(error=e)

    def _execute_group(self, group: list[_Pending]) -> None:
        """Decide every command of `group` in order against the state the ones before it left,
        and record all of them in one transaction. If that transaction fails on a conflict
        (another process wrote first), each command is decided and recorded on its own.

        A command refused in the group was refused against the group's state: the store as
        this process last saw it, plus what the commands before it decided. Those are decided
        again once the group is recorded and confirmed together at the head (_refuse_together);
        the accepted ones are answered first and pay nothing for it."""
        if len(group) == 1:
            self._finish_alone(group[0])
            return
        decided: list[tuple[_Pending, _Decision]] = []
        refused: list[_Pending] = []
        read_set: dict[UUID, int] = {}
        try:
            with self._projection_lock:
                state = self._decision_state()
                decided_at = state.position
                overlay: dict[UUID, LedgerAggregate] = {}

                def load(aggregate_id: UUID) -> LedgerAggregate | None:
                    agg = overlay.get(aggregate_id)
                    return agg.fork() if agg is not None else _fork_from(state, aggregate_id)

                events_so_far = 0
                for n, item in enumerate(group):
                    if events_so_far >= MAX_GROUP_EVENTS:  # big batches: the rest go in the next group
                        with self._queue_lock:
                            self._queue[:0] = group[n:]
                        break
                    try:
                        decision = self._decide(item.command, item.signed, state, load,
                                                item.verified)
                    except _Refused:
                        refused.append(item)
                        continue
                    except Exception as e:  # noqa: BLE001 - each command gets its own refusal
                        item.finish(error=e)
                        continue
                    if isinstance(decision, dict):  # a retry of a command already recorded
                        item.finish(outcome=decision)
                        continue
                    for aggregate_id, version in decision.read_set:
                        if aggregate_id not in overlay:
                            read_set.setdefault(aggregate_id, version)
                    for agg in decision.changed:
                        overlay[agg.id] = agg
                    decided.append((item, decision))
                    events_so_far += len(decision.events)
            if decided:
                self._record_group(decided, list(read_set.items()), decided_at)
        finally:
            if refused:
                self._refuse_together(refused)

    def _record_group(self, decided: list[tuple[_Pending, _Decision]],
                      read_set: list[tuple[UUID, int]], decided_at: int) -> None:
        events = [e for _, decision in decided for e in decision.events]
        try:
            positions = self._record(events, read_set, decided_at,
                                     [decision.signature for _, decision in decided])
        except (IntegrityError, SignatureSpent):
            # Another process wrote first, or one of the group is a refused request sent again:
            # decide each again, on its own, against what is now recorded.
            for item, _ in decided:
                self._finish_alone(item)
            return
        except Exception as e:  # noqa: BLE001 - nothing was written: every command is refused
            for item, _ in decided:
                item.finish(error=e)
            return
        end = 0
        for item, decision in decided:
            end += len(decision.events)
            item.finish(outcome={**decision.outcome, "position": positions[end - 1]})
        if self.auto_checkpoint:
            self.maybe_checkpoint(positions[-1])

    def _finish_alone(self, item: _Pending) -> None:
        try:
            item.finish(outcome=self._execute(item.command, item.signed, item.verified))
        except Exception as e:  # noqa: BLE001 - handed to the caller's thread
            item.finish(error=e)

    def _decide(self, command: C.Command, signed: SignedCommand, state: Projection,
                load: Callable[[UUID], LedgerAggregate | None], verified: Verified,
                ) -> dict[str, Any] | _Decision:
        """Authenticate and decide one command against `load`: the outcome of an earlier copy
        (a retry), or what to record. Raises _Refused to refuse (a refusal to confirm at the
        head), or DomainError for a refusal that rests on a record (`replay`,
        `duplicate_command`: records stay). `verified`: the signature checks of this request
        that passed before (see Verified); the ones that pass now are added."""
        when = self._decision_time()
        with dated(when):
            decision = self._decide_at(int(when.timestamp()), command, signed, state, load,
                                       verified)
        if isinstance(decision, _Decision):
            self._last_time = when
        return decision

    def _decision_time(self) -> datetime:
        """The time a command is decided at, which its events and record are dated with: the
        ledger's clock, but never before a decision this process made to record, nor before the
        last record the store showed it (so the log's times never go back, though a clock may,
        or another host's run ahead). Called with the projection lock held."""
        when = datetime.fromtimestamp(self.clock(), _library.TZINFO)
        return max(when, self._last_time, self.recorder.time_floor)

    def _decide_at(self, now: int, command: C.Command, signed: SignedCommand, state: Projection,
                   load: Callable[[UUID], LedgerAggregate | None], verified: Verified,
                   ) -> dict[str, Any] | _Decision:
        """_decide, at the decision time `now` (unix seconds)."""
        digest = command.digest()
        uow = UnitOfWork(load)

        def verify(job: SignatureJob) -> None:
            check = (job.public_key, job.signature, job.message)
            if check not in verified:
                verify_now(job)
                verified.add(check)

        actor_sig: Signature | None = None
        prior: CommandRecord | None = None
        try:
            actor_sig, consents = split_signatures(command, signed)
            authenticate(uow, command, signed, actor_sig, consents, now=now, verify=verify)
            prior = self._record_of(command.command_id, state)
            if prior is None:
                outcome = self._handlers[command.name](uow, command)
        except DomainError as e:
            # The refusal rests on what it read, and on the command id being free (the first
            # copy of a retry may have committed from another process, unseen here): if the
            # record appears before the refusal is confirmed, the command is decided again and
            # answered as the retry it is.
            record = CommandRecord.id_for(command.command_id)
            known = 1 if record.hex in state.record_ids else 0
            raise _Refused(e, [*_versions_loaded(uow), (record, known)],
                           self._spent(e, command, signed, actor_sig, verified, uow, now)) from None
        assert actor_sig is not None  # split_signatures gave it, or refused
        if prior is not None:
            return self._replayed(prior, command, digest, actor_sig)
        outcome = {"command_id": command.command_id, "command": command.name, **outcome}
        record = CommandRecord.accept(
            actor=command.actor, command_id=command.command_id, name=command.name,
            digest=digest, body=signed.body, method=signed.method, path=signed.path,
            signatures=[s.to_record() for s in signed.signatures], outcome=outcome,
        )
        changed = uow.changed()
        for agg in changed:
            agg.check_invariants()
        read_set = uow.read_set()
        events = [e for agg in (*changed, record) for e in agg.collect_events()]
        return _Decision(outcome, changed, read_set, events, actor_sig.signature)

    @staticmethod
    def _spent(error: DomainError, command: C.Command, signed: SignedCommand,
               actor_sig: Signature | None, verified: Verified, uow: UnitOfWork,
               now: int) -> Spent | None:
        """The refused request's actor signature, to store as spent: when it verified, and is
        recent enough to verify again later (older ones are refused as stale anyway).

        A refusal that came before the signature was checked (not_authorized, a signature
        outside the window) checks it now, with the actor's key as the refusal loaded it: a
        signature that verifies is spent whatever refused it. One whose key is unknown or
        revoked cannot be checked, and is not stored (nobody can fill the table with
        signatures that do not verify)."""
        if actor_sig is None:
            return None
        created = parse_base(actor_sig.base).params.get("created")
        if not isinstance(created, int) or created < now - WINDOW_PAST_S:
            return None
        if not any(signature == actor_sig.signature for _, signature, _ in verified):
            actor = uow.loaded.get(Participant.id_for(command.actor))
            if command.name == "initialise" or not isinstance(actor, Participant):
                return None
            try:
                public = actor.active_key(actor_sig.key_id)
                check_base(actor_sig, body=signed.body, method=signed.method, path=signed.path,
                           consent=False)
            except DomainError:
                return None
            message = actor_sig.base.encode("utf-8")
            if not K.verify(public, actor_sig.signature, message):
                return None
            verified.add((public, actor_sig.signature, message))
        return Spent(actor_sig.signature, created, actor_sig.key_id, command.command_id,
                     error.code)

    def _confirm(self, refusals: list[_Refused], decided_at: int) -> list[str]:
        """For each refusal, decided on the state at `decided_at`: HELD when nothing it read has
        moved on at the store's head (its signature is then stored as spent, where it verified),
        SPENT when the very same request was refused before, MOVED when it is to be decided
        again, caught up. The refusals of a group are confirmed together: one query, or one
        short write transaction when signatures are to be stored. An accepted command never
        comes here."""
        verdicts = self.recorder.confirm_refusals(
            [(r.read_set, r.spent) for r in refusals], decided_at=decided_at,
            forget_before=int(self.clock()) - WINDOW_PAST_S - WINDOW_FUTURE_S)
        if MOVED in verdicts:
            self._written_to = None  # another process wrote: catch up before deciding again
        return verdicts

    def _refuse_together(self, items: list[_Pending]) -> None:
        """The commands refused in a group, decided again against the state the group left
        (without the group's overlay) and confirmed together; one whose refusal does not hold,
        or that is accepted now, is decided and written on its own."""
        refusals: list[tuple[_Pending, _Refused]] = []
        alone: list[_Pending] = []
        with self._projection_lock:
            state = self._decision_state()
            decided_at = state.position
            for item in items:
                try:
                    decision = self._decide(item.command, item.signed, state,
                                            partial(_fork_from, state), item.verified)
                except _Refused as refused:
                    refusals.append((item, refused))
                except Exception as e:  # noqa: BLE001 - each command gets its own refusal
                    item.finish(error=e)
                else:
                    if isinstance(decision, dict):
                        item.finish(outcome=decision)
                    else:
                        alone.append(item)
        if refusals:
            verdicts = self._confirm([refused for _, refused in refusals], decided_at)
            for (item, refused), verdict in zip(refusals, verdicts, strict=True):
                if verdict == HELD:
                    item.finish(error=refused.error)
                elif verdict == SPENT:
                    item.finish(error=_replay_of_refused(item.command))
                else:
                    alone.append(item)
        for item in alone:
            self._finish_alone(item)

    def _record(self, events: list[Any], read_set: list[tuple[UUID, int]],
                decided_at: int, signatures: list[bytes]) -> list[int]:
        """Write the events in one transaction; return their log positions. `decided_at` is the
        log size the decision saw: when the log has not grown since, the read set needs no
        check. The commands' actor `signatures` must not be spent (SignatureSpent: nothing is
        written). When this process's projection and Merkle tree were at the log's end, they
        take the new records as written (no read back)."""
        stored = self.to_stored(events)
        leaves = leaf_hashes(stored)
        dating = Dating(_signed_until(events))
        try:
            positions = list(self.recorder.insert_events(stored, read_set=read_set, leaves=leaves,
                                                         decided_at=decided_at,
                                                         signatures=signatures,
                                                         dated=dating) or ())
        except IntegrityError:
            self._written_to = None  # another process wrote: catch up before deciding again
            raise
        if dating.stored is not None:  # dated after another process's later records
            stored, leaves = dating.stored, dating.leaves
        if len(positions) != len(stored):
            raise AssertionError(f"{len(stored)} records written, {len(positions)} positions back")
        with self._projection_lock:
            projection = self._projection
            if projection is not None and projection.position == positions[0] - 1:
                projection.take([(p, s.originator_id, s.originator_version, s.topic, s.state)
                                 for p, s in zip(positions, stored, strict=True)])
                self._written_to = positions[-1]
            else:
                self._written_to = None
        with self._tree_lock:
            if self._tree.size == positions[0] - 1:
                self._tree.extend(leaves)
        return positions

    def to_stored(self, events: list[Any]) -> list[StoredEvent]:
        return [self.mapper.to_stored_event(e) for e in events]

    def _execute(self, command: C.Command, signed: SignedCommand,
                 verified: Verified | None = None) -> dict[str, Any]:
        verified = set() if verified is None else verified
        for attempt in range(MAX_ATTEMPTS):
            # After two lost races, decide and write while no other process may write (where
            # the store can promise that), so that a busy writer elsewhere cannot starve this one.
            with self.recorder.exclusive() if attempt >= 2 else nullcontext():
                # Decide against the in-process state (caught up with the log when this process
                # was not the last to write); the store re-checks every version the decision
                # used, for a write and for a refusal alike.
                with self._projection_lock:
                    state = self._decision_state(check=attempt > 0)
                    decided_at = state.position
                    try:
                        decision = self._decide(command, signed, state, partial(_fork_from, state),
                                                verified)
                    except _Refused as refused:
                        decision = refused
                if isinstance(decision, _Refused):
                    verdict, = self._confirm([decision], decided_at)
                    if verdict == HELD:
                        raise decision.error
                    if verdict == SPENT:
                        raise _replay_of_refused(command)
                    continue  # it rested on something another process has changed since
                if isinstance(decision, dict):
                    return decision
                try:
                    positions = self._record(decision.events, decision.read_set, decided_at,
                                             [decision.signature])
                except IntegrityError:
                    continue  # someone else wrote first (or this id was just used): decide again
                except SignatureSpent:
                    raise _replay_of_refused(command) from None
            if self.auto_checkpoint:
                self.maybe_checkpoint(positions[-1])
            return {**decision.outcome, "position": positions[-1]}
        raise DomainError("conflict", f"command {command.command_id} kept conflicting with "
                          f"concurrent writes after {MAX_ATTEMPTS} attempts; retry it",
                          attempts=MAX_ATTEMPTS)

    def _record_of(self, command_id: str, state: Projection | None = None) -> CommandRecord | None:
        """The record of a command id, if one was accepted (known to `state` when given)."""
        if state is not None and CommandRecord.id_for(command_id).hex not in state.record_ids:
            return None
        try:
            return self.repository.get(CommandRecord.id_for(command_id))
        except AggregateNotFoundError:
            return None

    def _replayed(self, prior: CommandRecord, command: C.Command, digest: str,
                  actor_sig: Signature) -> dict[str, Any]:
        if prior.digest != digest:
            raise DomainError(
                "duplicate_command",
                f"command id {command.command_id} was already used for a different "
                f"{prior.name} command by {prior.actor}",
                command_id=command.command_id,
            )
        if any(bytes(s["signature"]) == actor_sig.signature for s in prior.signatures):
            raise DomainError("replay", f"this signed request for command {command.command_id} was "
                              "received before; a retry must be signed anew (new nonce)",
                              command_id=command.command_id)
        position = self.recorder.position_of(prior.id, prior.version)
        return {**prior.outcome, "position": position, "replayed": True}

    def submit(self, name: str, actor: str, command_id: str, args: dict[str, Any],
               consents: Sequence[str] | None = None) -> dict[str, Any]:
        """Sign with this registry's keyring and execute (the CLI, the demo and the tests use it).

        Keys for participants being registered are created in the keyring when the arguments
        carry none (demo and test convenience; real participants bring their own public key).
        `consents`: the parties that sign their consent with their keys in the keyring; by
        default every party the command needs as the registry stands (consents_needed) whose
        key the keyring holds.
        """
        if self.keyring is None:
            raise DomainError("unsigned", "this registry has no keyring to sign commands with")
        if consents is None:
            consents = [p for p in self.consents_needed(name, actor, command_id, args)
                        if self.keyring.has(p)]
        signed = sign_with_keyring(self.keyring, name, actor, command_id, args, int(self.clock()),
                                   consents=consents)
        outcome = self.execute(signed)
        if name == "rotate_key" and not outcome.get("replayed"):
            self.keyring.commit_rotation(args["participant_id"])
        return outcome

    def consents_needed(self, name: str, actor: str, command_id: str,
                        args: dict[str, Any]) -> list[str]:
        """The parties whose consent signature the command needs as the registry stands now (a
        key rotation's, by the new key, is not among them); none for a command that does not
        parse: its refusal comes when it is sent."""
        if name not in CONSENTED:
            return []
        try:
            command = C.make(name, actor, command_id, args)
            with self._projection_lock:
                state = self._decision_state()
                return consent_parties(UnitOfWork(partial(_fork_from, state)), command)
        except DomainError:
            return []

    # Reads of current state (the projections answer everything else) ----------------------------

    def get_aggregate(self, cls: type[A], aggregate_id: UUID) -> A | None:
        try:
            agg = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return agg if isinstance(agg, cls) else None

    def log_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    def projection(self, as_of: int | None = None,
                   progress: Callable[[Progress], None] | None = None) -> Projection:
        """The read models: the in-process one caught up to now, or a fresh one as of a position."""
        if as_of is not None:
            if as_of < 0:
                raise DomainError("invalid_argument", f"as_of must be a log position >= 0, got {as_of}")
            fresh = Projection(self)
            fresh.catch_up(upto=as_of, progress=progress)
            return fresh
        with self._projection_lock:
            return self._live_projection(progress)

    def view(self, read: Callable[[Projection], T], as_of: int | None = None) -> T:
        """`read(projection)`, caught up with every write committed before this call (or as of a
        position). What is new is read from the store without holding the projection's lock
        (one query, usually empty); it is applied and `read` runs under the lock, so a view
        never sees a command half applied."""
        if as_of is not None:
            return read(self.projection(as_of))
        projection = self._projection
        start = projection.position if projection is not None else -1
        rows = (self.recorder.select_raw(start + 1, PAGE, without_state=SKIPPED_PREFIXES)
                if start >= 0 else None)
        with self._projection_lock:
            projection = self._projection
            if (rows is not None and len(rows) < PAGE and projection is not None
                    and projection.position == start):
                projection.take(rows)
                # Caught up with the log as of now: decisions may go ahead without a query
                # until this process learns otherwise (see _decision_state).
                self._written_to = projection.position
            else:
                projection = self._live_projection()
            return read(projection)

    def _decision_state(self, check: bool = False) -> Projection:
        """The state to decide commands against. When this process wrote the log's last records
        and its projection took them (or a view has just caught up), no query is made: a
        decision is only as fresh as what it read, which the store re-checks before a write is
        recorded and before a refusal is reported (_confirm). So if another process has written
        since, a command that depended on it is decided again after catching up, whether it
        was to be accepted or refused. Call with the projection lock held."""
        projection = self._projection
        if not check and projection is not None and projection.position == self._written_to:
            return projection
        return self._live_projection()

    def _live_projection(self, progress: Callable[[Progress], None] | None = None) -> Projection:
        if self._projection is None:
            self._projection = Projection(self)
        self._projection.catch_up(progress=progress)
        return self._projection

    def log_tree(self, size: int | None = None) -> MerkleTree:
        """The RFC 9162 tree over the log, kept in memory and extended as the log grows."""
        with self._tree_lock:
            target = self.log_position() if size is None else size
            while self._tree.size < target:
                hashes = self.recorder.select_leaf_hashes(self._tree.size + 1, 5000, stop=target)
                if not hashes:
                    break
                self._tree.extend(hashes)
            if self._tree.size < target:
                raise DomainError("invalid_argument", f"the log has {self._tree.size} records, "
                                  f"not {target}")
            return self._tree

    def operator_checkpointer(self) -> Checkpointer | None:
        """A checkpointer when this process holds the operator's private key, else None."""
        if self.checkpointer is None and self.keyring is not None:
            # The in-process state has the genesis once it has caught up past it, without a read
            # of the store (this runs after every command when no checkpointer is found).
            projection = self._projection
            genesis = projection.genesis if projection is not None else None
            if genesis is None:
                genesis = self.get_aggregate(Genesis, Genesis.id_for())
            if genesis is not None and self.keyring.has(genesis.operator_id):
                self.checkpointer = Checkpointer(self, self.keyring.get(genesis.operator_id))
        return self.checkpointer

    def maybe_checkpoint(self, size: int | None = None) -> None:
        """Sign a checkpoint when one is due (every second or 1,000 events while writes happen)."""
        checkpointer = self.operator_checkpointer()
        if checkpointer is not None and checkpointer.due(size):
            checkpointer.make()

    def key_owner(self, key_id: str) -> str | None:
        """Whose key this is, from the in-process state (caught up only when the key is new to it).

        Used to label signatures as they arrive; the command's execution checks them again
        against the caught-up state, so a stale answer can refuse, never admit."""
        projection = self._projection
        owner = projection.key_owner.get(key_id) if projection is not None else None
        return owner if owner is not None else self.projection().key_owner.get(key_id)

    def state_at_head(self) -> tuple[Genesis | None, int, bytes]:
        """(genesis, position, state commitment root) of the live projection, read atomically."""
        with self._projection_lock:
            projection = self._live_projection()
            return projection.genesis, projection.position, projection.commitment.root()

    def rebuild(self, progress: Callable[[Progress], None] | None = None) -> Projection:
        """Replay every projection from position zero and make it the in-process one."""
        fresh = Projection(self)
        fresh.catch_up(progress=progress)
        with self._projection_lock:
            self._projection = fresh
        return fresh
