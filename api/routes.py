"""Which command each write path takes; shared by the server and the client."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from domain import commands as C


@dataclass(frozen=True)
class WriteRoute:
    method: str
    path: str
    commands: tuple[str, ...]
    created: bool = False
    summary: str = ""

    @cached_property
    def path_params(self) -> list[str]:
        return [p.strip("{}") for p in self.path.split("/") if p.startswith("{")]


WRITES = [
    WriteRoute("POST", "/v1/commands", C.COMMAND_NAMES, summary="Any command"),
    WriteRoute("POST", "/v1/participants", ("register_participant",), True,
               "Register a participant with its public key (operator)"),
    WriteRoute("POST", "/v1/participants/{participant_id}/keys/rotate", ("rotate_key",),
               summary="Rotate a participant's key (the participant, or the operator)"),
    WriteRoute("POST", "/v1/participants/{participant_id}/keys/{key_id}/revoke", ("revoke_key",),
               summary="Revoke a key"),
    WriteRoute("POST", "/v1/projects", ("register_project",), True, "Register a project (issuer)"),
    WriteRoute("POST", "/v1/tickets", ("issue_ticket",), True, "Issue a ticket (issuer)"),
    WriteRoute("POST", "/v1/tickets/{ticket_no}/cancellations", ("cancel_units",), True,
               "Cancel available units (the ticket's issuer)"),
    WriteRoute("POST", "/v1/accounts/{holder}/mandates", ("grant_mandate",), True,
               "Grant an exchange a trading mandate (the holder)"),
    WriteRoute("POST", "/v1/accounts/{holder}/mandates/{exchange}/revoke", ("revoke_mandate",),
               summary="Revoke a trading mandate (the holder)"),
    WriteRoute("POST", "/v1/transfers", ("transfer",), True, "Settle one trade (exchange)"),
    WriteRoute("POST", "/v1/transfers/batch", ("settle_batch",), True,
               "Settle up to 10,000 trades, all or nothing (exchange)"),
    WriteRoute("POST", "/v1/pledges", ("pledge",), True,
               "Create a pledge (the bank; with the pledgor's consent signature)"),
    WriteRoute("POST", "/v1/pledges/{pledge_id}/release", ("release_pledge",),
               summary="Release a pledge, whole or partly (the bank)"),
    WriteRoute("POST", "/v1/pledges/{pledge_id}/enforce", ("enforce_pledge",),
               summary="Enforce a pledge on default (the bank)"),
    WriteRoute("POST", "/v1/policies", ("bind_policy",), True, "Bind a policy (insurer)"),
    WriteRoute("POST", "/v1/claims", ("file_claim",), True, "File a claim"),
    WriteRoute("POST", "/v1/claims/{claim_id}/approve", ("approve_claim",),
               summary="Approve a claim (the insurer)"),
    WriteRoute("POST", "/v1/claims/{claim_id}/reject", ("reject_claim",),
               summary="Reject a claim (the insurer)"),
    WriteRoute("POST", "/v1/claims/{claim_id}/loss-confirmation", ("confirm_loss",),
               summary="Confirm a physical loss (the tickets' issuer or a regulator)"),
    WriteRoute("POST", "/v1/retirements", ("retire",), True, "Retire units (the holder)"),
    WriteRoute("PUT", "/v1/compliance/{entity}/{scheme}/{period}/emissions", ("record_emissions",),
               summary="Record verified emissions (regulator)"),
    WriteRoute("PUT", "/v1/compliance/{scheme}/{period}/limits", ("set_limits",),
               summary="Set offset limits (regulator)"),
    WriteRoute("POST", "/v1/accounts/{holder}/freeze", ("freeze",),
               summary="Freeze an account (regulator or court)"),
    WriteRoute("POST", "/v1/accounts/{holder}/unfreeze", ("unfreeze",),
               summary="Lift one's own freeze (regulator or court)"),
]

# Path parameter -> the argument it must equal, where the names differ.
PARAM_ARG = {"participant_id": "participant_id", "key_id": "key_id", "ticket_no": "ticket_no",
              "holder": "holder", "exchange": "exchange", "pledge_id": "pledge_id",
              "claim_id": "claim_id", "entity": "entity", "scheme": "scheme", "period": "period"}


BY_COMMAND: dict[str, WriteRoute] = {r.commands[0]: r for r in WRITES if len(r.commands) == 1}


def path_for(name: str, args: dict[str, Any]) -> tuple[str, str]:
    """(method, path) of the resource that takes this command, path parameters filled in."""
    route = BY_COMMAND.get(name)
    if route is None:
        return "POST", "/v1/commands"
    path = route.path
    for param in route.path_params:
        path = path.replace("{" + param + "}", str(args[PARAM_ARG[param]]))
    return route.method, path
