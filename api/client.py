"""A Python client for the registry's HTTP API: what an exchange, a bank or an insurer imports.

    from api.client import Client
    from ledger.keys import read_private
    exchange = Client("http://127.0.0.1:8000", "shaxian-exchange", read_private(path))
    exchange.transfer(trade_id="SX-1", seller="changkou-village", buyer="tonghai-nickel",
                      ticket_no="SM-0000001", quantity_t=100, price="15.00")

Every write is signed (RFC 9421, Ed25519) over its canonical JSON body; a retry re-signs the
same command with a fresh nonce, so the registry returns the first outcome instead of acting
twice. Refusals raise ApiError with the registry's stable code.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api.http_signatures import sign_request
from api.routes import path_for
from ledger.signing import Signature, canonical_json

RETRIES = 3
RETRY_BACKOFF_S = 0.2


class ApiError(Exception):
    """A refusal: the HTTP status, the registry's stable code, its sentence and details."""

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body


class Client:
    def __init__(self, base_url: str, participant_id: str | None = None,
                 key: Ed25519PrivateKey | None = None, *, timeout_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.participant_id = participant_id
        self.key = key
        self.clock = clock
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s, transport=transport)
        self.last_response: httpx.Response | None = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # Writes ----------------------------------------------------------------------------------

    def command(self, name: str, args: dict[str, Any], command_id: str | None = None, *,
                consents: list[Ed25519PrivateKey] | None = None,
                consent_signatures: Sequence[Signature] = (),
                path: tuple[str, str] | None = None) -> dict[str, Any]:
        """Sign and send one command; retried on network failures with the same command id.
        `consents`: keys that sign a consent now; `consent_signatures`: consents signed
        before, by parties whose keys are elsewhere (`carbon-ledger consent`). The response
        (its X-Log-Position and Idempotent-Replayed headers) is kept in `last_response`."""
        if self.key is None or self.participant_id is None:
            raise ValueError("a write needs the participant id and its private key")
        command_id = command_id or default_command_id(name, self.participant_id, args)
        body = canonical_json({"command": name, "actor": self.participant_id,
                               "command_id": command_id, "args": args})
        method, url = path or path_for(name, args)
        last: Exception | None = None
        for attempt in range(RETRIES):
            headers = sign_request(self.key, method=method, path=url, body=body,
                                   created=int(self.clock()), consents=consents)
            for i, sig in enumerate(consent_signatures, start=len(consents or ()) + 2):
                params = sig.base.rsplit('"@signature-params": ', 1)[-1]
                headers["Signature-Input"] += f", sig{i}={params}"
                headers["Signature"] += f", sig{i}=:{base64.b64encode(sig.signature).decode()}:"
            headers["Content-Type"] = "application/json"
            try:
                response = self.http.request(method, url, content=body, headers=headers)
            except httpx.TransportError as e:
                last = e
                time.sleep(RETRY_BACKOFF_S * (attempt + 1))
                continue
            self.last_response = response
            if response.status_code >= 500:
                last = ApiError(response.status_code, "server_error", response.text[:200], {})
                time.sleep(RETRY_BACKOFF_S * (attempt + 1))
                continue
            return self._result(response)
        assert last is not None
        raise last

    def transfer(self, *, trade_id: str, seller: str, buyer: str, ticket_no: str, price: str,
                 quantity_t: int | None = None, first_serial: str | None = None,
                 last_serial: str | None = None, mode: str = "negotiated") -> dict[str, Any]:
        args: dict[str, Any] = {"trade_id": trade_id, "seller": seller, "buyer": buyer,
                                "ticket_no": ticket_no, "price": price, "mode": mode}
        for k, v in (("quantity_t", quantity_t), ("first_serial", first_serial),
                     ("last_serial", last_serial)):
            if v is not None:
                args[k] = v
        return self.command("transfer", args)

    def settle_batch(self, batch_id: str, transfers: list[dict[str, Any]]) -> dict[str, Any]:
        return self.command("settle_batch", {"batch_id": batch_id, "transfers": transfers})

    def pledge(self, *, pledge_id: str, pledgor: str, pledgor_key: Ed25519PrivateKey,
               loan_ref: str, secured_amount: str, maturity: str,
               lines: list[dict[str, Any]]) -> dict[str, Any]:
        """Create a pledge as the bank; the pledgor's key signs its consent to the same body."""
        return self.command("pledge", {"pledge_id": pledge_id, "pledgor": pledgor,
                                       "loan_ref": loan_ref, "secured_amount": secured_amount,
                                       "maturity": maturity, "lines": lines},
                            consents=[pledgor_key])

    def release_pledge(self, pledge_id: str, lines: list[dict[str, Any]] | None = None,
                       command_id: str | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {"pledge_id": pledge_id}
        if lines is not None:
            args["lines"] = lines
        return self.command("release_pledge", args, command_id)

    def enforce_pledge(self, pledge_id: str, to: str | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {"pledge_id": pledge_id}
        if to:
            args["to"] = to
        return self.command("enforce_pledge", args)

    def retire(self, **args: Any) -> dict[str, Any]:
        return self.command("retire", args)

    # Insurance (rules edition 2: the insured consents to its policy; the tickets' issuer or a
    # regulator confirms a physical loss; a court that froze the account consents to its units'
    # cancellation) ------------------------------------------------------------------------------

    def bind_policy(self, *, policy_id: str, insured: str, insured_key: Ed25519PrivateKey,
                    lines: list[dict[str, Any]], sum_insured: str, premium: str, start: str,
                    end: str, perils: list[str], loss_payee: str | None = None) -> dict[str, Any]:
        """Bind a policy as the insurer; the insured's key signs its consent to the same body."""
        args: dict[str, Any] = {"policy_id": policy_id, "insured": insured, "lines": lines,
                                "sum_insured": sum_insured, "premium": premium, "start": start,
                                "end": end, "perils": perils}
        if loss_payee:
            args["loss_payee"] = loss_payee
        return self.command("bind_policy", args, consents=[insured_key])

    def file_claim(self, *, claim_id: str, policy_id: str, peril: str, loss_date: str,
                   claimed_t: int, description: str | None = None) -> dict[str, Any]:
        """File a claim as the insured or its loss payee."""
        args: dict[str, Any] = {"claim_id": claim_id, "policy_id": policy_id, "peril": peril,
                                "loss_date": loss_date, "claimed_t": claimed_t}
        if description:
            args["description"] = description
        return self.command("file_claim", args)

    def confirm_loss(self, claim_id: str, confirmed_t: int, report: str) -> dict[str, Any]:
        """Confirm a physical loss as the tickets' issuer or a regulator, with the survey."""
        return self.command("confirm_loss", {"claim_id": claim_id, "confirmed_t": confirmed_t,
                                             "report": report})

    def approve_claim(self, claim_id: str, approved_t: int, payout: str, *,
                      court_keys: list[Ed25519PrivateKey] | None = None) -> dict[str, Any]:
        """Approve a claim as the insurer; `court_keys`: the consent of each court that froze
        the insured's account, when its units are to be cancelled."""
        return self.command("approve_claim", {"claim_id": claim_id, "approved_t": approved_t,
                                              "payout": payout}, consents=court_keys)

    def reject_claim(self, claim_id: str, reason: str) -> dict[str, Any]:
        return self.command("reject_claim", {"claim_id": claim_id, "reason": reason})

    # Reads -----------------------------------------------------------------------------------

    def get(self, path: str, params: dict[str, Any] | None = None, *, signed: bool = True) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        request = self.http.build_request("GET", path, params=params)
        headers = {}
        if signed and self.key is not None:
            headers = sign_request(self.key, method="GET", path=request.url.path,
                                   query=request.url.query.decode("ascii"), created=int(self.clock()))
        response = self.http.send(self.http.build_request("GET", path, params=params, headers=headers))
        return self._result(response)

    def balances(self, holder: str, as_of: int | str | None = None) -> dict[str, Any]:
        """as_of: a log position or an ISO 8601 date or date-time (docs/api.md)."""
        return self.get(f"/v1/accounts/{holder}/balances", {"as_of": as_of})

    def ticket(self, ticket_no: str, as_of: int | str | None = None) -> dict[str, Any]:
        return self.get(f"/v1/tickets/{ticket_no}", {"as_of": as_of})

    def pledge_view(self, pledge_id: str) -> dict[str, Any]:
        return self.get(f"/v1/pledges/{pledge_id}")

    def pledge_proof(self, pledge_id: str) -> dict[str, Any]:
        return self.get(f"/v1/pledges/{pledge_id}/proof")

    def compliance(self, entity: str, scheme: str, period: str,
                   as_of: int | str | None = None) -> dict[str, Any]:
        return self.get(f"/v1/compliance/{entity}/{scheme}/{period}", {"as_of": as_of})

    def latest_checkpoint(self) -> dict[str, Any]:
        return self.get("/v1/checkpoints/latest", signed=False)

    @staticmethod
    def _result(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"code": "invalid_response", "detail": response.text[:200]}
            raise ApiError(response.status_code, body.get("code", "unknown"),
                           body.get("detail", ""), body)
        return response.json()


def default_command_id(name: str, actor: str, args: dict[str, Any]) -> str:
    """Natural ids make natural command ids, so a retry of the same trade is recognised."""
    natural = {"transfer": ("trade", actor, args.get("trade_id")),
               "settle_batch": ("batch", actor, args.get("batch_id")),
               "pledge": ("pledge", args.get("pledge_id")),
               "bind_policy": ("policy", args.get("policy_id")),
               "file_claim": ("claim", args.get("claim_id")),
               "approve_claim": ("claim", args.get("claim_id"), "approve"),
               "confirm_loss": ("claim", args.get("claim_id"), "confirm"),
               "reject_claim": ("claim", args.get("claim_id"), "reject"),
               "retire": ("retirement", args.get("retirement_id")),
               "issue_ticket": ("ticket", args.get("ticket_no")),
               "register_participant": ("participant", args.get("participant_id")),
               "register_project": ("project", args.get("project_id")),
               "cancel_units": ("cancellation", args.get("ticket_no"), args.get("cancellation_id"))}
    parts = natural.get(name)
    if parts and all(isinstance(p, str) for p in parts):
        return "/".join(parts)  # type: ignore[arg-type]
    return f"{name}/{actor}/{secrets.token_hex(8)}"
