"""Signed commands built by hand: every refusal has a stable code and writes nothing.

Each test gets a copy of one SQLite-file demo registry (and its keys) whose clock is fixed
(injected), then builds SignedCommand objects with canonical_json() and sign() the way a client would.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import DomainError
from ledger import demo
from ledger import keys as K
from ledger.application import Registry
from ledger.audit import audit_database
from ledger.keys import Keyring
from ledger.signing import Signature, SignedCommand, canonical_json, sign

# The ledger's (injected) clock for every test of this module: set when the module's demo registry
# is built, so that recorded times and signature times stay close however long the session runs.
NOW = 0


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> float:
        return float(self.now)


def copy_database(src: Path, dst: Path) -> None:
    source, target = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


@pytest.fixture(autouse=True)
def authenticated_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command of these tests is authenticated twice more: with the signatures' base
    checks made beforehand (check_bases, as the audit's reader makes them) and without; the two
    must agree, refusal for refusal, before the registry's own authentication runs."""
    import ledger.application
    from ledger.authentication import authenticate, check_bases

    def twice(uow: Any, command: Any, signed: SignedCommand, actor_sig: Signature,
              consents: dict[str, Signature], **kw: Any) -> None:
        verdicts = []
        for checked in (None, check_bases(signed, actor_sig, consents)):
            try:
                authenticate(uow, command, signed, actor_sig, consents, **kw, checked=checked)
                verdicts.append(None)
            except DomainError as e:
                verdicts.append((e.code, e.message))
        assert verdicts[0] == verdicts[1]
        authenticate(uow, command, signed, actor_sig, consents, **kw)

    monkeypatch.setattr(ledger.application, "authenticate", twice)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo story, loaded once per module into a database file and a key folder."""
    global NOW
    NOW = int(time.time())
    folder = tmp_path_factory.mktemp("signatures")
    registry = Registry(f"sqlite:///{folder / 'registry.db'}", keyring=Keyring(folder / "keys"),
                        clock=Clock(NOW))
    try:
        for name, actor, command_id, args in demo.story():
            try:
                registry.submit(name, actor, command_id, args)
            except DomainError as e:
                assert demo.EXPECTED_REFUSALS.get(command_id) == e.code
    finally:
        registry.close()
    return folder


@pytest.fixture
def app(template: Path, tmp_path: Path) -> Iterator[Registry]:
    """A private copy of the demo registry and of its participants' keys, with a fixed clock."""
    copy_database(template / "registry.db", tmp_path / "registry.db")
    shutil.copytree(template / "keys", tmp_path / "keys")
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", keyring=Keyring(tmp_path / "keys"),
                        clock=Clock(NOW))
    yield registry
    registry.close()


def key_of(app: Registry, participant: str) -> Ed25519PrivateKey:
    assert app.keyring is not None
    return app.keyring.get(participant)


def body_of(name: str, actor: str, command_id: str, args: dict[str, Any]) -> bytes:
    return canonical_json({"command": name, "actor": actor, "command_id": command_id, "args": args})


EMISSIONS = ("record_emissions", "fujian-eco", "emissions/jinsen-carbon/fujian_ets/2022",
             {"entity": "jinsen-carbon", "scheme": "fujian_ets", "period": "2022",
              "verified_emissions_t": 1_000})


def emissions_body(command_id: str = EMISSIONS[2], tonnes: int = 1_000) -> bytes:
    name, actor, _, args = EMISSIONS
    return body_of(name, actor, command_id, {**args, "verified_emissions_t": tonnes})


def signed_by(key: Ed25519PrivateKey, signer: str, body: bytes, *, created: int | None = None,
              extra: tuple[Signature, ...] = ()) -> SignedCommand:
    created = NOW if created is None else created
    return SignedCommand(body=body, signatures=(sign(key, signer, body, created=created), *extra))


def refused(app: Registry, signed: SignedCommand, code: str) -> DomainError:
    """Execute and expect a refusal with this code; nothing may be written."""
    before = app.log_position()
    with pytest.raises(DomainError) as e:
        app.execute(signed)
    assert e.value.code == code, e.value
    assert app.log_position() == before
    return e.value


def accepted(app: Registry, signed: SignedCommand) -> dict[str, Any]:
    before = app.log_position()
    outcome = app.execute(signed)
    assert app.log_position() == outcome["position"] > before
    return outcome


# The baseline ----------------------------------------------------------------------------------

def test_a_hand_signed_command_is_accepted_and_audits_clean(app: Registry) -> None:
    outcome = accepted(app, signed_by(key_of(app, "fujian-eco"), "fujian-eco", emissions_body()))
    assert outcome["verified_emissions_t"] == 1_000 and "replayed" not in outcome
    report = audit_database(app.recorder, workers=1)
    assert report.ok, report.failure


# Who signed ------------------------------------------------------------------------------------

def test_unsigned_command_is_refused(app: Registry) -> None:
    e = refused(app, SignedCommand(body=emissions_body()), "unsigned")
    assert "no signature by its actor fujian-eco" in e.message


def test_signature_by_someone_else_than_the_actor_is_refused(app: Registry) -> None:
    e = refused(app, signed_by(key_of(app, "cib-sanming"), "cib-sanming", emissions_body()),
                "bad_signature")
    assert "unexpected signature by cib-sanming" in e.message


def test_actor_named_as_signer_but_signed_with_another_participants_key(app: Registry) -> None:
    e = refused(app, signed_by(key_of(app, "cib-sanming"), "fujian-eco", emissions_body()),
                "unknown_key")
    assert "is not a key of fujian-eco" in e.message


def test_bad_signature_bytes_are_refused(app: Registry) -> None:
    good = sign(key_of(app, "fujian-eco"), "fujian-eco", emissions_body(), created=NOW)
    bad = Signature(good.signer, good.key_id, good.base, bytes([good.signature[0] ^ 1]) + good.signature[1:])
    e = refused(app, SignedCommand(body=emissions_body(), signatures=(bad,)), "bad_signature")
    assert "does not verify" in e.message


def test_body_changed_after_signing_is_refused_by_content_digest(app: Registry) -> None:
    sig = sign(key_of(app, "fujian-eco"), "fujian-eco", emissions_body(tonnes=1_000), created=NOW)
    e = refused(app, SignedCommand(body=emissions_body(tonnes=9_000), signatures=(sig,)),
                "bad_signature")
    assert "content-digest" in e.message


def test_signature_over_another_method_or_path_is_refused(app: Registry) -> None:
    body = emissions_body()
    sig = sign(key_of(app, "fujian-eco"), "fujian-eco", body, created=NOW, path="/v1/other")
    e = refused(app, SignedCommand(body=body, signatures=(sig,)), "bad_signature")
    assert "another method or path" in e.message


def test_unknown_key_id_is_refused(app: Registry) -> None:
    stranger = K.generate()
    e = refused(app, signed_by(stranger, "fujian-eco", emissions_body()), "unknown_key")
    assert K.key_id(K.public_text(stranger)) in e.message


# Revoked and rotated keys -----------------------------------------------------------------------

def test_revoked_key_is_refused(app: Registry) -> None:
    old = key_of(app, "fujian-eco")
    kid = K.key_id(K.public_text(old))
    app.submit("revoke_key", "fujian-eco", "revoke/fujian-eco/1",
               {"participant_id": "fujian-eco", "key_id": kid, "reason": "laptop stolen"})
    e = refused(app, signed_by(old, "fujian-eco", emissions_body()), "revoked_key")
    assert f"key {kid} of fujian-eco is revoked" == e.message


def test_rotated_key_is_refused_and_the_new_key_works(app: Registry) -> None:
    old = key_of(app, "fujian-eco")
    outcome = app.submit("rotate_key", "fujian-eco", "rotate/fujian-eco/1",
                         {"participant_id": "fujian-eco"})
    new = key_of(app, "fujian-eco")
    assert outcome["old_key_id"] == K.key_id(K.public_text(old))
    assert outcome["key_id"] == K.key_id(K.public_text(new)) != outcome["old_key_id"]
    e = refused(app, signed_by(old, "fujian-eco", emissions_body()), "revoked_key")
    assert e.message.endswith("is rotated")
    accepted(app, signed_by(new, "fujian-eco", emissions_body()))
    # the auditor checks each signature under the keys valid at its position
    report = audit_database(app.recorder, workers=1)
    assert report.ok, report.failure


def test_operator_rotates_a_lost_key(app: Registry) -> None:
    lost = key_of(app, "jinsen-carbon")
    outcome = app.submit("rotate_key", "registry", "rotate/jinsen-carbon/lost",
                         {"participant_id": "jinsen-carbon"})
    assert outcome["by"] == "registry"
    args = {"holder": "jinsen-carbon", "exchange": "shaxian-exchange"}
    body = body_of("revoke_mandate", "jinsen-carbon", "mandate/jinsen-carbon/revoke", args)
    refused(app, signed_by(lost, "jinsen-carbon", body), "revoked_key")
    accepted(app, signed_by(key_of(app, "jinsen-carbon"), "jinsen-carbon", body))


def test_another_participant_may_not_rotate_a_key(app: Registry) -> None:
    before = app.log_position()
    with pytest.raises(DomainError) as e:
        app.submit("rotate_key", "cib-sanming", "rotate/jinsen-carbon/by-bank",
                   {"participant_id": "jinsen-carbon"})
    assert e.value.code == "not_authorized"
    assert app.log_position() == before


def rotation_body(new_public: str) -> bytes:
    return body_of("rotate_key", "fujian-eco", "rotate/fujian-eco/2",
                   {"participant_id": "fujian-eco", "new_public_key": new_public})


def test_rotation_needs_the_new_keys_consent(app: Registry) -> None:
    new = K.generate()
    body = rotation_body(K.public_text(new))
    actor = key_of(app, "fujian-eco")
    e = refused(app, signed_by(actor, "fujian-eco", body), "consent_missing")
    assert "fujian-eco" in e.message
    # a consent by the old key is no proof of possession of the new one
    by_old = sign(actor, "fujian-eco", body, created=NOW, consent=True)
    refused(app, signed_by(actor, "fujian-eco", body, extra=(by_old,)), "consent_missing")
    by_new = sign(new, "fujian-eco", body, created=NOW, consent=True)
    outcome = accepted(app, signed_by(actor, "fujian-eco", body, extra=(by_new,)))
    assert outcome["key_id"] == K.key_id(K.public_text(new))


# The time window -------------------------------------------------------------------------------

@pytest.mark.parametrize("offset", [-301, 61, -10_000, 3_600])
def test_stale_signature_is_refused(app: Registry, offset: int) -> None:
    e = refused(app, signed_by(key_of(app, "fujian-eco"), "fujian-eco", emissions_body(),
                               created=NOW + offset), "stale_signature")
    assert f"created at {NOW + offset}" in e.message


@pytest.mark.parametrize("offset", [-299, -300, 0, 60])
def test_signature_inside_the_window_is_accepted(app: Registry, offset: int) -> None:
    accepted(app, signed_by(key_of(app, "fujian-eco"), "fujian-eco", emissions_body(),
                            created=NOW + offset))


def test_the_window_follows_the_ledgers_clock(app: Registry) -> None:
    signed = signed_by(key_of(app, "fujian-eco"), "fujian-eco", emissions_body(), created=NOW)
    app.clock.now = NOW + 301  # type: ignore[attr-defined]
    refused(app, signed, "stale_signature")
    app.clock.now = NOW + 300  # type: ignore[attr-defined]
    accepted(app, signed)


# Retries -----------------------------------------------------------------------------------------

def test_replayed_request_is_refused_and_a_resigned_retry_returns_the_first_outcome(
        app: Registry) -> None:
    key = key_of(app, "fujian-eco")
    first = signed_by(key, "fujian-eco", emissions_body())
    outcome = accepted(app, first)
    after = app.log_position()
    e = refused(app, first, "replay")
    assert EMISSIONS[2] in e.message
    retry = app.execute(signed_by(key, "fujian-eco", emissions_body()))  # new nonce, same command
    assert retry == {**outcome, "replayed": True}
    assert app.log_position() == after


def test_same_command_id_with_other_content_is_a_duplicate(app: Registry) -> None:
    key = key_of(app, "fujian-eco")
    accepted(app, signed_by(key, "fujian-eco", emissions_body(tonnes=1_000)))
    e = refused(app, signed_by(key, "fujian-eco", emissions_body(tonnes=2_000)), "duplicate_command")
    assert EMISSIONS[2] in e.message


# Canonical bodies -----------------------------------------------------------------------------

def _payload() -> dict[str, Any]:
    name, actor, command_id, args = EMISSIONS
    return {"command": name, "actor": actor, "command_id": command_id, "args": args}


NON_CANONICAL = {
    "white space": json.dumps(_payload(), sort_keys=True).encode(),
    "indented": json.dumps(_payload(), sort_keys=True, indent=2).encode(),
    "unsorted keys": json.dumps({k: _payload()[k] for k in ("command_id", "args", "command", "actor")},
                                separators=(",", ":")).encode(),
    "float": canonical_json(_payload()).replace(b":1000}", b":1000.0}"),
    "exponent": canonical_json(_payload()).replace(b":1000}", b":1e3}"),
    "escaped ascii": canonical_json(_payload()).replace(b'"fujian-eco"', b'"fujian\\u002deco"'),
    "trailing newline": canonical_json(_payload()) + b"\n",
    # JSON may escape half of a surrogate pair; UTF-8 cannot carry it, so no canonical form has it
    "lone surrogate": canonical_json(_payload()).replace(b'"fujian-eco"', b'"fujian\\ud800eco"'),
    "lone low surrogate": canonical_json(_payload()).replace(b'"fujian-eco"', b'"\\udc00"'),
}


@pytest.mark.parametrize("variant", sorted(NON_CANONICAL))
def test_non_canonical_body_is_refused(app: Registry, variant: str) -> None:
    body = NON_CANONICAL[variant]
    assert body != canonical_json(_payload())
    refused(app, signed_by(key_of(app, "fujian-eco"), "fujian-eco", body), "non_canonical")


def test_a_value_with_a_lone_surrogate_cannot_be_made_canonical() -> None:
    with pytest.raises(DomainError) as e:
        canonical_json({"command": "x\ud800"})
    assert e.value.code == "non_canonical"


def test_non_canonical_float_elsewhere_in_the_body_is_refused(app: Registry) -> None:
    body = body_of("grant_mandate", "jinsen-carbon", "m-1",
                   {"holder": "jinsen-carbon", "exchange": "shaxian-exchange"})
    body = body.replace(b'"command_id":"m-1"', b'"command_id":"m-1","x":0.5')
    refused(app, signed_by(key_of(app, "jinsen-carbon"), "jinsen-carbon", body), "non_canonical")


# Roles and consents --------------------------------------------------------------------------------

def test_holder_may_not_issue_a_ticket_even_with_its_own_valid_key(app: Registry) -> None:
    body = body_of("issue_ticket", "changkou-village", "issue/SM-0009999", {
        "ticket_no": "SM-0009999", "project_id": "SM-P-001", "standard": "SMCER",
        "period_start": "2021-01-01", "period_end": "2021-12-31", "quantity_t": 1_000_000})
    e = refused(app, signed_by(key_of(app, "changkou-village"), "changkou-village", body),
                "not_authorized")
    assert "changkou-village is a holder" in e.message


def pledge_body() -> bytes:
    return body_of("pledge", "cib-sanming", "pledge/PL-2022-007", {
        "pledge_id": "PL-2022-007", "pledgor": "tonghai-nickel", "loan_ref": "CIB-SM-2022-7",
        "secured_amount": "100000.00", "maturity": "2025-12-31",
        "lines": [{"ticket_no": "SM-0000001", "quantity_t": 1_000}]})


def test_pledge_without_the_pledgors_consent_is_refused(app: Registry) -> None:
    body = pledge_body()
    e = refused(app, signed_by(key_of(app, "cib-sanming"), "cib-sanming", body), "consent_missing")
    assert "tonghai-nickel" in e.message


def test_pledge_consent_signed_with_another_key_is_refused(app: Registry) -> None:
    body = pledge_body()
    forged = sign(key_of(app, "cib-sanming"), "tonghai-nickel", body, created=NOW, consent=True)
    refused(app, signed_by(key_of(app, "cib-sanming"), "cib-sanming", body, extra=(forged,)),
            "unknown_key")


def test_pledge_consent_over_another_body_is_refused(app: Registry) -> None:
    body = pledge_body()
    other = body.replace(b'"quantity_t":1000', b'"quantity_t":2000')
    consent = sign(key_of(app, "tonghai-nickel"), "tonghai-nickel", other, created=NOW, consent=True)
    e = refused(app, signed_by(key_of(app, "cib-sanming"), "cib-sanming", body, extra=(consent,)),
                "bad_signature")
    assert "content-digest" in e.message


def test_pledge_with_the_pledgors_consent_is_accepted(app: Registry) -> None:
    body = pledge_body()
    consent = sign(key_of(app, "tonghai-nickel"), "tonghai-nickel", body, created=NOW, consent=True)
    outcome = accepted(app, signed_by(key_of(app, "cib-sanming"), "cib-sanming", body,
                                      extra=(consent,)))
    assert (outcome["pledgor"], outcome["pledgee"], outcome["pledged_t"]) == (
        "tonghai-nickel", "cib-sanming", 1_000)
    report = audit_database(app.recorder, workers=1)
    assert report.ok, report.failure


# Public keys -----------------------------------------------------------------------------------

RAW = bytes(range(32))
MALFORMED_KEYS = {
    "too short": "ed25519:abc",
    "31 bytes": "ed25519:" + base64.b64encode(RAW[:31]).decode(),
    "33 bytes": "ed25519:" + base64.b64encode(RAW + b"!").decode(),
    "no prefix": base64.b64encode(RAW).decode(),
    "other algorithm": "ssh-ed25519 " + base64.b64encode(RAW).decode(),
    "non-canonical base64": "ed25519:" + base64.b64encode(RAW).decode()[:-2] + "9=",
    "not base64": "ed25519:" + "!" * 43 + "=",
    "empty": "",
}


@pytest.mark.parametrize("variant", sorted(MALFORMED_KEYS))
def test_participant_with_a_malformed_public_key_is_refused(app: Registry, variant: str) -> None:
    before = app.log_position()
    with pytest.raises(DomainError) as e:
        app.submit("register_participant", "registry", f"register/bad-key-{len(variant)}", {
            "participant_id": "new-holder", "name": "New holder", "role": "holder",
            "public_key": MALFORMED_KEYS[variant]})
    assert e.value.code == "invalid_argument"
    assert app.log_position() == before
    assert "new-holder" not in app.projection().participants


def _parse_with_hooks(body: bytes) -> Any:
    """parse_canonical as it was before its fast path: every key and integer checked by hooks."""
    from ledger.signing import _ascii_keys, _checked_int, _no_float

    obj = json.loads(body.decode("utf-8"), parse_float=_no_float, parse_constant=_no_float,
                     parse_int=_checked_int, object_pairs_hook=_ascii_keys)
    if canonical_json(obj, checked=True) != body:
        raise DomainError("non_canonical", "")
    return obj


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.text(max_size=8)
    | st.sampled_from(["é", "碳票", "9" * 16, "x" * 17]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=6) | st.sampled_from(["é", "数量", "1234567890123456"]), inner,
        max_size=4),
    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(_json_values)
def test_parse_canonical_agrees_with_the_hooks_on_every_body(value: Any) -> None:
    """The fast path (an ASCII body with no 16-digit run) parses or refuses exactly as checking
    every key and integer does."""
    from ledger.signing import parse_canonical

    body = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()

    def outcome(parse: Any) -> Any:
        try:
            return ("ok", parse(body))
        except DomainError as e:
            return ("refused", e.code)

    assert outcome(parse_canonical) == outcome(_parse_with_hooks)


_escapes = st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=6) | st.sampled_from(
    ["\x00\x1f\x7f", "\"\\/", "\u2028", "\b\f\n\r\t", "林\":", "碳\\n", "é"])
_body_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60) | _escapes
    | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(["1.5", ":12.5", "é"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=4) | _escapes, inner,
        max_size=4),
    max_leaves=10)


@settings(max_examples=500, deadline=None)
@given(_body_values, st.sampled_from(["canonical", "spaced", "unsorted", "escaped", "repeated"]))
def test_msgspecs_way_gives_json_verdict_on_every_body(value: Any, form: str) -> None:
    """parse_canonical's msgspec way (no float, no non-ASCII key, no 16-digit run) parses or
    refuses every body as json with every hook does: canonical ones, and ones with white
    space, keys out of order, escaped non-ASCII or a key twice. On a canonical body with ASCII
    keys it is the way taken."""
    from ledger.signing import _NOT_FAST, _parsed_if_canonical, parse_canonical

    text = json.dumps(value, ensure_ascii=form == "escaped", sort_keys=form != "unsorted",
                      separators=(", ", ": ") if form == "spaced" else (",", ":"))
    if form == "repeated" and text.startswith("{") and len(text) > 2:
        text = text[:-1] + ',"":0}' if text.endswith("}") else text
        text = '{"":1,' + text[1:]
    body = text.encode("utf-8", "surrogatepass")

    def outcome(parse: Any) -> Any:
        try:
            return ("ok", parse(body))
        except DomainError as e:
            return ("refused", e.code)
        except UnicodeDecodeError:
            return ("refused", "invalid_argument")

    assert outcome(parse_canonical) == outcome(_parse_with_hooks)
    if re.search(rb"[0-9]{16}", body):
        return  # (parse_canonical does not ask msgspec)
    fast = _parsed_if_canonical(body)
    if fast is not _NOT_FAST:
        assert outcome(_parse_with_hooks) == ("ok", fast)
    if (form == "canonical" and not any(type(v) is float for v in _leaves(value))
            and all(k.isascii() for k in _keys(value))):
        assert fast == value  # json's canonical text is msgspec's, escapes and all


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        yield from value
        for v in value.values():
            yield from _keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _keys(v)
