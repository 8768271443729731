"""The demo story over HTTP, through a real uvicorn process: figures, proofs, audit, idempotency.

The `demo_world` fixture (tests/e2e/conftest.py) starts `carbon-ledger serve` with a new
operator key written to <keys>/registry.key, initialises the registry with the "initialise"
command on POST /v1/commands, then posts every step of ledger.demo.story() through
api.client.Client, each participant signing with its own key. The tests below run in file order;
the ones that write (idempotency, batches) use their own participants and ticket, and the audit
with the CLI comes last, after the whole HTTP session.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.client import ApiError
from api.http_signatures import sign_request
from api.routes import path_for
from ledger import demo
from ledger.checkpoints import unb64, verify_checkpoint
from ledger.keys import key_id, public_text
from ledger.proofs import ProofError, verify_bundle
from ledger.signing import canonical_json

EXCHANGE = "shaxian-exchange"
REGULATOR = "fujian-eco"
BANK = "cib-sanming"
SELLER, BUYER = "e2e-seller", "e2e-buyer"
E2E_TICKET = "E2E-0000001"
E2E_ISSUED_T = 100_000
BATCH_SIZE = 1_000


def signed_post(world: Any, actor: str, name: str, args: dict[str, Any], command_id: str,
                body: bytes | None = None) -> tuple[bytes, httpx.Response]:
    """Sign one command with the actor's key (a fresh nonce each call) and POST it raw."""
    body = body or canonical_json({"command": name, "actor": actor, "command_id": command_id,
                                   "args": args})
    method, path = path_for(name, args)
    headers = sign_request(world.key(actor), method=method, path=path, body=body,
                           created=int(time.time()))
    headers["Content-Type"] = "application/json"
    response = httpx.request(method, world.base_url + path, content=body, headers=headers,
                             timeout=120)
    return body, response


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == code, problem
    assert problem["status"] == status
    return problem


@pytest.fixture(scope="module")
def market(demo_world: Any) -> Any:
    """Two more holders mandating the exchange, and a ticket of 100,000 t of their own."""
    demo_world.register(SELLER, "holder", "E2E 卖方林场")
    demo_world.register(BUYER, "holder", "E2E 买方企业")
    issuer = demo_world.client("sanming-forestry")
    issuer.command("register_project", {
        "project_id": "E2E-P-001", "name": "端到端测试林", "owner": SELLER, "county": "沙县区",
        "area_mu": 1000, "standard": "SMCER", "methodology": "e2e"}, "e2e-project")
    issuer.command("issue_ticket", {
        "ticket_no": E2E_TICKET, "project_id": "E2E-P-001", "standard": "SMCER",
        "period_start": "2019-01-01", "period_end": "2021-12-31", "quantity_t": E2E_ISSUED_T},
        "e2e-issue")
    for holder in (SELLER, BUYER):
        demo_world.client(holder).command("grant_mandate", {"holder": holder, "exchange": EXCHANGE},
                                          f"e2e-mandate-{holder}")
    return demo_world


def _available(world: Any, holder: str, ticket_no: str) -> int:
    view = world.client(REGULATOR).balances(holder)
    return sum(t["available_t"] for t in view["tickets"] if t["ticket_no"] == ticket_no)


# The story ----------------------------------------------------------------------------------

def test_a_new_server_starts_empty(live_server: str) -> None:
    health = httpx.get(live_server + "/healthz", timeout=10).json()
    assert health == {"status": "ok", "position": 0, "worker": health["worker"]}
    assert isinstance(health["worker"], int) and health["worker"] > 0
    response = httpx.get(live_server + "/v1/checkpoints/latest", timeout=10)
    assert response.status_code == 404 and response.json()["code"] == "unknown_checkpoint"



def test_registry_was_initialised_over_http_by_the_new_operator_key(demo_world: Any) -> None:
    genesis = demo_world.outcomes["demo-init"]
    assert genesis["command"] == "initialise"
    assert genesis["operator_key"] == demo_world.operator_public
    assert (demo_world.server.keys / "registry.key").exists()
    operator = demo_world.client().get("/v1/participants/registry", signed=False)
    assert operator["role"] == "operator"
    assert [k["key_id"] for k in operator["keys"]] == [key_id(demo_world.operator_public)]


def test_every_step_of_the_story_was_posted_and_only_the_cap_was_refused(
        demo_world: Any, carbon_ledger: Any, tmp_path: Path) -> None:
    steps = list(demo.story())
    assert len(demo_world.outcomes) + len(demo_world.refusals) == len(steps)
    assert set(demo_world.refusals) == set(demo.EXPECTED_REFUSALS)
    refusal = demo_world.refusals["retirement/RT-2022-002"]
    assert isinstance(refusal, ApiError)
    assert (refusal.status, refusal.code) == (422, "cap_exceeded")
    for name, _actor, command_id, _args in steps:
        if command_id in demo_world.outcomes:
            outcome = demo_world.outcomes[command_id]
            assert (outcome["command"], outcome["command_id"]) == (name, command_id)
    # The log is as long as the same story loaded in-process by `carbon-ledger demo`.
    where = ("--db", f"sqlite:///{tmp_path / 'cli.db'}", "--keys", str(tmp_path / "keys"))
    assert carbon_ledger("init", *where, cwd=tmp_path).returncode == 0
    loaded = carbon_ledger("demo", "--json", *where, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    in_process = json.loads(loaded.stdout)
    # `init` made the genesis; `demo` sends the rest of the story
    assert (in_process["commands"], in_process["refused"]) == (len(steps) - 1, 1)
    assert demo_world.server.position() == in_process["position"]


@pytest.mark.parametrize("holder", ["changkou-village", "jinsen-carbon", "tonghai-nickel"])
def test_balances_over_http_equal_the_cli(demo_world: Any, holder: str) -> None:
    over_http = demo_world.client(REGULATOR).balances(holder)
    cli = demo_world.server.cli("balances", holder, "--json")
    assert cli.returncode == 0, cli.stderr
    assert over_http == json.loads(cli.stdout)


def test_the_demo_figures_over_http(demo_world: Any) -> None:
    regulator = demo_world.client(REGULATOR)
    assert regulator.balances("changkou-village")["totals"] == {
        "available_t": 0, "pledged_t": 0, "retired_t": 0, "cancelled_t": 0}
    assert regulator.balances("jinsen-carbon")["totals"] == {
        "available_t": 0, "pledged_t": 17_794, "retired_t": 0, "cancelled_t": 500}
    tonghai = regulator.balances("tonghai-nickel")
    by_ticket = {t["ticket_no"]: t for t in tonghai["tickets"]}
    assert (by_ticket["SM-0000001"]["standard"], by_ticket["SM-0000001"]["available_t"]) == (
        "SMCER", 2_723)
    assert (by_ticket["FFCER-0000001"]["standard"], by_ticket["FFCER-0000001"]["available_t"],
            by_ticket["FFCER-0000001"]["retired_t"]) == ("FFCER", 1_000, 5_000)
    assert tonghai["totals"]["retired_t"] == 5_000
    ticket = demo_world.client().ticket("SM-0000002")  # public: no signature
    assert (ticket["issued_t"], ticket["available_t"], ticket["pledged_t"], ticket["retired_t"],
            ticket["cancelled_t"]) == (9_000, 183, 7_794, 523, 500)
    compliance = regulator.compliance("tonghai-nickel", "fujian_ets", "2021")
    assert (compliance["limit_t"], compliance["used_t"], compliance["remaining_t"]) == (
        5_000, 5_000, 0)
    pledge = demo_world.client(BANK).pledge_view("PL-2021-001")
    assert (pledge["status"], pledge["pledged_t"], pledge["impaired_t"]) == ("active", 17_794, 500)


def test_the_pledge_proof_verifies_offline_with_the_operator_key(demo_world: Any) -> None:
    bundle = demo_world.client(BANK).pledge_proof("PL-2021-001")
    proven = verify_bundle(bundle, demo_world.operator_public)
    assert proven["ok"] and proven["kind"] == "pledge" and proven["id"] == "PL-2021-001"
    assert (proven["pledgee"], proven["pledgor"], proven["status"]) == (BANK, "jinsen-carbon", "active")
    assert (proven["pledged_t"], proven["impaired_t"]) == (17_794, 500)
    assert sum(u["quantity_t"] for u in proven["units"]) == 17_794
    # A bundle is only as good as its signature and its hashes.
    with pytest.raises(ProofError):  # another key than the operator's
        verify_bundle(bundle, public_text(demo_world.key(REGULATOR)))
    forged = copy.deepcopy(bundle)
    for leaf in forged["leaves"]:
        if leaf["key"] == "pledge/PL-2021-001":
            leaf["value"]["impaired_t"] = 0
    with pytest.raises(ProofError):
        verify_bundle(forged, demo_world.operator_public)


def test_the_latest_checkpoint_is_public_and_signed_by_the_operator(demo_world: Any) -> None:
    deadline = time.monotonic() + 15
    while True:
        response = httpx.get(demo_world.base_url + "/v1/checkpoints/latest", timeout=10)
        if response.status_code == 200 and response.json()["size"] >= 88:
            break
        assert time.monotonic() < deadline, response.text
        time.sleep(0.2)
    cp = response.json()
    checked = verify_checkpoint(cp["body"].encode(), unb64(cp["signature"]), demo_world.operator_public)
    assert checked.size == cp["size"] and checked.origin == demo.ORIGIN


def test_metrics_are_prometheus_text(demo_world: Any) -> None:
    response = httpx.get(demo_world.base_url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {"http_requests", "http_request_duration_seconds", "ledger_commands",
            "ledger_log_position", "ledger_checkpoint_size"} <= set(families)
    commands = {(s.labels["command"], s.labels["outcome"]): s.value
                for s in families["ledger_commands"].samples if s.name == "ledger_commands_total"}
    assert commands[("transfer", "accepted")] >= 5
    assert commands[("retire", "cap_exceeded")] == 1
    [position] = families["ledger_log_position"].samples
    assert position.value == demo_world.server.position()


# Idempotency and batches --------------------------------------------------------------------

def test_a_resigned_retry_returns_the_first_outcome(market: Any) -> None:
    args = {"trade_id": "E2E-T-0001", "seller": SELLER, "buyer": BUYER, "ticket_no": E2E_TICKET,
            "quantity_t": 10, "price": "12.00", "mode": "negotiated"}
    command_id = f"trade/{EXCHANGE}/E2E-T-0001"
    body, first = signed_post(market, EXCHANGE, "transfer", args, command_id)
    assert first.status_code == 201, first.text
    assert first.headers["Idempotent-Replayed"] == "false"
    position = market.server.position()
    assert first.headers["X-Log-Position"] == str(position)
    _, retry = signed_post(market, EXCHANGE, "transfer", args, command_id, body=body)
    assert retry.status_code == 201, retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json() == first.json()
    assert market.server.position() == position  # nothing written twice
    assert _available(market, BUYER, E2E_TICKET) == 10


def test_the_same_trade_id_with_another_body_is_a_duplicate(market: Any) -> None:
    args = {"trade_id": "E2E-T-0001", "seller": SELLER, "buyer": BUYER, "ticket_no": E2E_TICKET,
            "quantity_t": 11, "price": "12.00", "mode": "negotiated"}
    position = market.server.position()
    _, response = signed_post(market, EXCHANGE, "transfer", args, f"trade/{EXCHANGE}/E2E-T-0001")
    _problem(response, 409, "duplicate_command")
    with pytest.raises(ApiError) as refused:  # the Python client says the same
        market.client(EXCHANGE).transfer(trade_id="E2E-T-0001", seller=SELLER, buyer=BUYER,
                                          ticket_no=E2E_TICKET, quantity_t=12, price="12.00")
    assert (refused.value.status, refused.value.code) == (409, "duplicate_command")
    assert market.server.position() == position
    assert _available(market, BUYER, E2E_TICKET) == 10


def _batch(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"trade_id": f"{prefix}-{i:04d}", "seller": SELLER, "buyer": BUYER,
             "ticket_no": E2E_TICKET, "quantity_t": 1, "price": "12.50", "mode": "negotiated"}
            for i in range(n)]


def test_a_batch_of_1000_transfers_settles_in_one_request(market: Any) -> None:
    before_buyer = _available(market, BUYER, E2E_TICKET)
    before_seller = _available(market, SELLER, E2E_TICKET)
    position = market.server.position()
    outcome = market.client(EXCHANGE).settle_batch("E2E-BATCH-1", _batch("E2E-B1", BATCH_SIZE))
    assert (outcome["batch_id"], outcome["count"], outcome["quantity_t"]) == (
        "E2E-BATCH-1", BATCH_SIZE, BATCH_SIZE)
    assert len(outcome["trades"]) == BATCH_SIZE
    assert market.server.position() > position
    assert _available(market, BUYER, E2E_TICKET) == before_buyer + BATCH_SIZE
    assert _available(market, SELLER, E2E_TICKET) == before_seller - BATCH_SIZE
    last = market.client(EXCHANGE).get(f"/v1/transfers/E2E-B1-{BATCH_SIZE - 1:04d}")
    assert (last["batch_id"], last["quantity_t"], last["price"]) == ("E2E-BATCH-1", 1, "12.50")


def test_one_bad_item_refuses_the_whole_batch(market: Any) -> None:
    items = _batch("E2E-B2", BATCH_SIZE)
    items[BATCH_SIZE - 1]["quantity_t"] = E2E_ISSUED_T * 10  # more than the seller holds
    before_buyer = _available(market, BUYER, E2E_TICKET)
    position = market.server.position()
    with pytest.raises(ApiError) as refused:
        market.client(EXCHANGE).settle_batch("E2E-BATCH-2", items)
    assert refused.value.status == 422
    assert refused.value.code == "insufficient_available"
    assert refused.value.body["index"] == BATCH_SIZE - 1
    assert market.server.position() == position  # all or nothing
    assert _available(market, BUYER, E2E_TICKET) == before_buyer
    with pytest.raises(ApiError) as missing:
        market.client(EXCHANGE).get("/v1/transfers/E2E-B2-0000")
    assert (missing.value.status, missing.value.code) == (404, "unknown_trade")


# The audit, after the whole HTTP session ------------------------------------------------------

def test_the_cli_audit_rechecks_every_http_signature(market: Any) -> None:
    position = market.server.position()
    result = market.server.cli("verify", "--json", "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True, report["failure"]
    assert report["operator_key_pinned"] and report["operator_key"] == market.operator_public
    assert report["records"] >= position
    assert report["signatures"] >= report["commands"] > 0
