"""The authorization matrix, over HTTP against a real server: every role (two participants of
each; one operator, as a registry has only one) x every write command and every private read.

The expected cells below are written from the documented rules — the "who" column of the write
and read resources in docs/api.md, and the roles in docs/model.md — not from the code's own
permission table (domain/commands.py PERMISSIONS). Each row names a command, the participants
who may send it against its subject (the "-a" participants own the subjects: holder-a's units,
bank-a's pledges, insurer-a's policy, issuer-a's project and ticket), and the code any other
participant is refused with when it is not `not_authorized`. Allowed cells may still be refused
for a rule of the domain (units already moved, a claim no longer pending), never for who sent
them. Every write is also sent unsigned (401 unsigned) and signed with another participant's
key (401 unknown_key).

Rows run in the order written, forbidden senders first, so that a forbidden cell always meets
the state the row was written for; the reads run before the writes change anything.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from api.http_signatures import sign_request
from api.routes import path_for
from domain import commands as C
from domain.genesis import LATEST_EDITION
from ledger.application import Registry
from ledger.keys import Keyring, generate, public_text
from ledger.signing import canonical_json

OPERATOR = "registry"
ROLES = ["issuer", "regulator", "exchange", "bank", "insurer", "court", "holder"]
EVERYONE = [OPERATOR] + [f"{role}-{x}" for role in ROLES for x in "ab"]
AUTH_CODES = {"not_authorized", "unsigned", "bad_signature", "unknown_key", "revoked_key",
              "consent_missing", "stale_signature", "key_not_yet_valid", "replay"}
REGULATORS = "regulator-a regulator-b registry"  # "regulators": role regulator or operator

# command | who may send it (docs/api.md "who") | forbidden-but-not-role refusals
# Subjects: see SUBJECTS below. A "*" after a name: that participant's refusal is the code given.
WRITES = """
register_participant | registry
register_project     | issuer-a issuer-b
issue_ticket         | issuer-a                                   (the project's issuer)
cancel_units         | issuer-a                                   (the ticket's issuer)
transfer             | exchange-a            | exchange-b=no_mandate (an exchange the seller mandated)
settle_batch         | exchange-a            | exchange-b=no_mandate
pledge               | bank-a bank-b                              (a bank, with the pledgor's consent)
release_pledge       | bank-a                                     (the pledgee)
enforce_pledge       | bank-a                                     (the pledgee)
bind_policy          | insurer-a insurer-b                        (an insurer, with the insured's consent)
file_claim           | holder-a bank-a                            (the insured, the loss payee)
confirm_loss         | issuer-a regulator-a regulator-b           (the tickets' issuer, or a regulator)
approve_claim        | insurer-a                                  (the policy's insurer)
reject_claim         | insurer-a                                  (the policy's insurer)
retire               | holder-a holder-b bank-a bank-b            (a holder or bank, its own units)
record_emissions     | regulator-a regulator-b
set_limits           | regulator-a regulator-b
grant_mandate        | holder-a                                   (the holder itself)
revoke_mandate       | holder-a                                   (the holder itself)
freeze               | regulator-a regulator-b court-a court-b    (a regulator or a court)
unfreeze             | regulator-a regulator-b court-a court-b    (each lifts its own freeze: all four froze)
adopt_rules          | registry                                   (the operator; here refused as not newer)
rotate_key           | holder-b registry                          (the participant, or the operator)
revoke_key           | holder-b registry                          (the participant, or the operator)
"""

# path | who may read it (docs/api.md, read resources)
READS = f"""
/v1/accounts/holder-a/balances                 | holder-a {REGULATORS} exchange-a bank-a bank-b
/v1/transfers/TR-A?exchange=exchange-a         | exchange-a holder-a holder-b {REGULATORS}
/v1/pledges                                    | bank-a bank-b {REGULATORS}
/v1/pledges?bank=bank-a                        | bank-a {REGULATORS}
/v1/pledges/PL-A                               | bank-a holder-a {REGULATORS}
/v1/pledges/PL-A/proof                         | bank-a holder-a {REGULATORS}
/v1/policies/POL-A                             | insurer-a holder-a bank-a {REGULATORS}
/v1/claims/CL-A                                | insurer-a holder-a bank-a issuer-a {REGULATORS}
/v1/compliance/holder-a/fujian_ets/2024        | holder-a {REGULATORS}
/v1/log?after=0&limit=5                        | {REGULATORS}
"""
# (A bank reads any holder's balances: it sees only the units pledged to it; an exchange reads
# the balances of holders that mandated it: holder-a mandated exchange-a only.)


def _rows(table: str) -> list[tuple[str, set[str], dict[str, str]]]:
    rows = []
    for line in table.strip().splitlines():
        cells = [c.strip() for c in line.split("|")]
        allowed = set(cells[1].split("(")[0].split())
        overrides = {}
        if len(cells) > 2:
            for item in cells[2].split("(")[0].split():
                who, code = item.split("=")
                overrides[who] = code
        rows.append((cells[0], allowed, overrides))
    return rows


CELL = itertools.count(1)


def _subject(name: str, actor: str, keys: Keyring) -> dict[str, Any]:
    """The arguments of `name` against the row's subject, made unique per cell where needed."""
    n = next(CELL)
    uniq = f"{actor}-{n}"
    tx = {"seller": "holder-a", "buyer": "holder-b", "ticket_no": "SM-0000001", "quantity_t": 1,
          "price": "10.00", "mode": "negotiated"}
    return {
        "register_participant": lambda: {"participant_id": f"new-{uniq}", "name": "newcomer",
                                         "role": "holder",
                                         "public_key": public_text(keys.create(f"new-{uniq}"))},
        "register_project": lambda: {"project_id": f"P-{uniq}", "name": "forest",
                                     "owner": "holder-a", "county": "Jiangle", "area_mu": "100",
                                     "standard": "SMCER"},
        "issue_ticket": lambda: {"ticket_no": f"SM-{n + 100:07d}", "project_id": "P-A",
                                 "standard": "SMCER", "period_start": "2021-01-01",
                                 "period_end": "2021-12-31", "quantity_t": 10},
        "cancel_units": lambda: {"cancellation_id": f"C-{uniq}", "ticket_no": "SM-0000001",
                                 "holder": "holder-a", "quantity_t": 1, "reason": "overstated"},
        "transfer": lambda: {"trade_id": f"T-{uniq}", **tx},
        "settle_batch": lambda: {"batch_id": f"B-{uniq}", "transfers": [
            {"trade_id": f"BT-{uniq}", **tx}]},
        "pledge": lambda: {"pledge_id": f"PL-{uniq}", "pledgor": "holder-a",
                           "loan_ref": f"L-{uniq}", "secured_amount": "1000.00",
                           "maturity": "2030-01-01",
                           "lines": [{"ticket_no": "SM-0000001", "quantity_t": 1}]},
        "release_pledge": lambda: {"pledge_id": "PL-A", "lines": [
            {"ticket_no": "SM-0000001", "quantity_t": 1}]},
        "enforce_pledge": lambda: {"pledge_id": "PL-B"},
        "bind_policy": lambda: {"policy_id": f"POL-{uniq}", "insured": "holder-a",
                                "lines": [{"ticket_no": "SM-0000001", "quantity_t": 5}],
                                "sum_insured": "500.00", "premium": "5.00",
                                "start": "2024-01-01", "end": "2024-12-31", "perils": ["fire"]},
        "file_claim": lambda: {"claim_id": f"CL-{uniq}", "policy_id": "POL-A", "peril": "fire",
                               "loss_date": "2024-03-01", "claimed_t": 1},
        "confirm_loss": lambda: {"claim_id": "CL-A", "confirmed_t": 2,
                                 "report": "surveyed: 2 t burned"},
        "approve_claim": lambda: {"claim_id": "CL-A", "approved_t": 1, "payout": "10.00"},
        "reject_claim": lambda: {"claim_id": "CL-B", "reason": "no loss found"},
        "retire": lambda: {"retirement_id": f"RT-{uniq}", "purpose": "voluntary",
                           "beneficiary": actor,
                           "lines": [{"ticket_no": "SM-0000001", "quantity_t": 1}]},
        "record_emissions": lambda: {"entity": "holder-a", "scheme": "fujian_ets",
                                     "period": "2024", "verified_emissions_t": 1000 + n},
        "set_limits": lambda: {"scheme": "fujian_ets", "period": "2025",
                               "limits_bp": {"FFCER": 1000}, "total_bp": 1000},
        "grant_mandate": lambda: {"holder": "holder-a", "exchange": "exchange-b"},
        "revoke_mandate": lambda: {"holder": "holder-a", "exchange": "exchange-b"},
        "freeze": lambda: {"holder": "holder-b", "reason": "court order"},
        "unfreeze": lambda: {"holder": "holder-b"},
        "adopt_rules": lambda: {"edition": LATEST_EDITION},
        "rotate_key": lambda: {"participant_id": "holder-b",
                               "new_public_key": public_text(_new_key("holder-b"))},
        "revoke_key": lambda: {"participant_id": "holder-b", "key_id": _key_id(keys, "holder-b"),
                               "reason": "lost"},
    }[name]()


NEW_KEYS: dict[str, Any] = {}  # the key a rotation cell proposes, by participant


def _new_key(who: str) -> Any:
    NEW_KEYS[who] = generate()
    return NEW_KEYS[who]


def _key_id(keys: Keyring, who: str) -> str:
    from ledger.keys import signing_key_id

    return signing_key_id(keys.get(who))


def _setup(url: str, keys: Keyring) -> None:
    app = Registry(url, keyring=keys)
    n = 0

    def run(name: str, actor: str, args: dict[str, Any]) -> None:
        nonlocal n
        n += 1
        app.submit(name, actor, f"setup-{n:03d}-{name}", args)

    try:
        run("initialise", OPERATOR, {"origin": "carbon-ledger.test/authz", "operator_id": OPERATOR,
                                     "name": "operator", "rules_edition": LATEST_EDITION})
        for pid in EVERYONE[1:]:
            run("register_participant", OPERATOR, {"participant_id": pid, "name": pid,
                                                   "role": pid.rsplit("-", 1)[0]})
        run("register_project", "issuer-a", {"project_id": "P-A", "name": "forest",
                                             "owner": "holder-a", "county": "Jiangle",
                                             "area_mu": "1000", "standard": "SMCER"})
        run("issue_ticket", "issuer-a", {"ticket_no": "SM-0000001", "project_id": "P-A",
                                         "standard": "SMCER", "period_start": "2020-01-01",
                                         "period_end": "2022-12-31", "quantity_t": 1000})
        for holder in ("holder-a", "holder-b", "bank-a", "bank-b"):
            run("grant_mandate", holder, {"holder": holder, "exchange": "exchange-a"})
        for buyer in ("holder-b", "bank-a", "bank-b"):
            run("transfer", "exchange-a", {"trade_id": f"TR-{buyer}", "seller": "holder-a",
                                           "buyer": buyer, "ticket_no": "SM-0000001",
                                           "quantity_t": 50, "price": "10.00",
                                           "mode": "negotiated"})
        run("transfer", "exchange-a", {"trade_id": "TR-A", "seller": "holder-a",
                                       "buyer": "holder-b", "ticket_no": "SM-0000001",
                                       "quantity_t": 5, "price": "10.00", "mode": "negotiated"})
        for pledge_id in ("PL-A", "PL-B"):
            run("pledge", "bank-a", {"pledge_id": pledge_id, "pledgor": "holder-a",
                                     "loan_ref": f"L-{pledge_id}", "secured_amount": "1000.00",
                                     "maturity": "2030-01-01",
                                     "lines": [{"ticket_no": "SM-0000001", "quantity_t": 20}]})
        run("bind_policy", "insurer-a", {"policy_id": "POL-A", "insured": "holder-a",
                                         "lines": [{"ticket_no": "SM-0000001", "quantity_t": 100}],
                                         "sum_insured": "10000.00", "premium": "100.00",
                                         "start": "2024-01-01", "end": "2024-12-31",
                                         "perils": ["fire", "pest"], "loss_payee": "bank-a"})
        for claim_id in ("CL-A", "CL-B"):
            run("file_claim", "holder-a", {"claim_id": claim_id, "policy_id": "POL-A",
                                           "peril": "fire", "loss_date": "2024-02-01",
                                           "claimed_t": 2})
        run("record_emissions", "regulator-a", {"entity": "holder-a", "scheme": "fujian_ets",
                                                "period": "2024", "verified_emissions_t": 1000})
    finally:
        app.close()


@pytest.fixture(scope="module")
def matrix_world(serve: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[Any, Keyring]]:
    root = tmp_path_factory.mktemp("authz")
    keys = Keyring(root / "client-keys")
    server_root = root / "server"
    server_root.mkdir()
    _setup(f"sqlite:///{server_root / 'registry.db'}", keys)
    server = serve(server_root, keys.get(OPERATOR))
    yield server, keys
    server.stop()
    while _CLIENT:
        _CLIENT.pop().close()


def _send(base: str, keys: Keyring, name: str, actor: str, args: dict[str, Any], command_id: str,
          *, signer: str | None = None, unsigned: bool = False) -> httpx.Response:
    body = canonical_json({"command": name, "actor": actor, "command_id": command_id,
                           "args": args})
    method, path = path_for(name, args)
    headers = {"Content-Type": "application/json"}
    if not unsigned:
        consents = []
        if name == "pledge":
            consents = [keys.get(args["pledgor"])]
        elif name == "bind_policy":
            consents = [keys.get(args["insured"])]
        elif name == "rotate_key":
            consents = [NEW_KEYS[args["participant_id"]]]  # made with the new key
        headers.update(sign_request(keys.get(signer or actor), method=method, path=path,
                                    body=body, created=int(time.time()), consents=consents))
    return _http().request(method, base + path, content=body, headers=headers)


_CLIENT: list[httpx.Client] = []


def _http() -> httpx.Client:
    """One client for every cell (a new one per request costs more than the request)."""
    if not _CLIENT:
        _CLIENT.append(httpx.Client(timeout=30))
    return _CLIENT[0]


def _about_the_subject(name: str, who: str, code: str, r: httpx.Response) -> bool:
    """An allowed sender refused with a code that is about the command's subject, not about
    who sent it: the key being revoked is revoked already (the problem names its owner)."""
    if code in ("revoked_key", "unknown_key"):
        return r.json().get("signer") not in (None, who)
    return False


def _code(r: httpx.Response) -> str | None:
    try:
        return r.json().get("code")
    except ValueError:
        return None


def test_the_tables_cover_every_write_command() -> None:
    written = {name for name, _, _ in _rows(WRITES)}
    assert written == set(C.COMMAND_NAMES) - {"initialise"}, (
        set(C.COMMAND_NAMES) ^ written)
    for _, allowed, overrides in _rows(WRITES) + _rows(READS):
        assert allowed <= set(EVERYONE) and set(overrides) <= set(EVERYONE)


def test_every_role_against_every_private_read(matrix_world: tuple[Any, Keyring]) -> None:
    server, keys = matrix_world
    wrong: list[str] = []
    cells = 0
    for target, allowed, _ in _rows(READS):
        path, _, query = target.partition("?")
        r = _http().get(server.base_url + target)
        cells += 1
        if _code(r) != "unsigned":
            wrong.append(f"GET {target} unsigned: {r.status_code} {_code(r)}")
        for who in EVERYONE:
            if not keys.has(who):
                continue
            headers = sign_request(keys.get(who), method="GET", path=path, query=query,
                                   created=int(time.time()))
            r = _http().get(server.base_url + target, headers=headers)
            cells += 1
            if who in allowed and r.status_code != 200:
                wrong.append(f"GET {target} by {who} (allowed): {r.status_code} {_code(r)}")
            elif who not in allowed and _code(r) != "not_authorized":
                wrong.append(f"GET {target} by {who} (forbidden): {r.status_code} {_code(r)}")
    print(f"\n{cells} read cells checked")
    assert not wrong, "\n".join(wrong)


def test_a_bank_sees_only_the_units_pledged_to_it(matrix_world: tuple[Any, Keyring]) -> None:
    server, keys = matrix_world
    seen = {}
    for bank in ("bank-a", "bank-b"):
        path = "/v1/accounts/holder-a/balances"
        headers = sign_request(keys.get(bank), method="GET", path=path, created=int(time.time()))
        view = httpx.get(server.base_url + path, headers=headers, timeout=30).json()
        seen[bank] = view["totals"]
        assert view["totals"]["available_t"] == 0 and view["totals"]["retired_t"] == 0
    assert seen["bank-a"]["pledged_t"] > 0  # PL-A and PL-B are bank-a's
    assert seen["bank-b"]["pledged_t"] == 0


def test_every_role_against_every_write(matrix_world: tuple[Any, Keyring]) -> None:
    server, keys = matrix_world
    base = server.base_url
    wrong: list[str] = []
    cells = 0
    allowed_outcomes: dict[str, list[str]] = {}
    for name, allowed, overrides in _rows(WRITES):
        forbidden = [p for p in EVERYONE if p not in allowed]
        # unsigned, and signed with someone else's key: refused before anything else
        actor = sorted(allowed)[0]
        for how, expect in (("unsigned", "unsigned"), ("other-key", "unknown_key")):
            r = _send(base, keys, name, actor, _subject(name, actor, keys),
                      f"m/{name}/{how}", unsigned=how == "unsigned",
                      signer="court-b" if actor != "court-b" else "court-a")
            cells += 1
            if _code(r) != expect:
                wrong.append(f"{name} {how}: {r.status_code} {_code(r)}, expected {expect}")
        for who in forbidden + sorted(allowed):
            args = _subject(name, who, keys)
            r = _send(base, keys, name, who, args, f"m/{name}/{who}")
            cells += 1
            code = _code(r)
            if who in allowed:
                allowed_outcomes.setdefault(name, []).append(code or str(r.status_code))
                if r.status_code >= 500 or (code in AUTH_CODES and not _about_the_subject(
                        name, who, code, r)):
                    wrong.append(f"{name} by {who} (allowed): {r.status_code} {code}: "
                                 f"{r.text[:160]}")
                elif name == "rotate_key" and r.status_code < 300:
                    keys.replace("holder-b", NEW_KEYS["holder-b"])
            else:
                expect = overrides.get(who, "not_authorized")
                if code != expect:
                    wrong.append(f"{name} by {who} (forbidden): {r.status_code} {code}, "
                                 f"expected {expect}: {r.text[:160]}")
    print(f"\n{cells} write cells checked; what the allowed senders got:")
    for name, outcomes in allowed_outcomes.items():
        print(f"  {name}: {' '.join(outcomes)}")
    # Allowed cells mostly succeed: the matrix exercises the rules, not only their refusals.
    accepted = sum(o.startswith("2") for os_ in allowed_outcomes.values() for o in os_)
    assert accepted >= 0.7 * sum(map(len, allowed_outcomes.values())), allowed_outcomes
    assert not wrong, "\n".join(wrong)
