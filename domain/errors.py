"""Refusals: every rule that says no raises a DomainError with a stable code."""

from __future__ import annotations

from typing import Any

# The stable codes, with what each means. Clients branch on the code, people read the message.
CODES: dict[str, str] = {
    "invalid_argument": "a field is missing, of the wrong type, or out of range",
    "not_found": "nothing is served at that path",
    "method_not_allowed": "the path does not take that HTTP method",
    "unknown_participant": "no participant is registered with that id",
    "unknown_project": "no project is registered with that id",
    "unknown_ticket": "no ticket has been issued with that number",
    "unknown_pledge": "no pledge has that id",
    "unknown_policy": "no insurance policy has that id",
    "unknown_claim": "no claim has that id",
    "unknown_retirement": "no retirement has that id",
    "unknown_trade": "no trade has that id",
    "already_exists": "something with that id is already recorded",
    "duplicate_command": "the command id was used before for a different command",
    "not_authorized": "the actor's role or identity may not issue this command",
    "no_mandate": "the holder has not granted this exchange a trading mandate",
    "account_frozen": "the account is frozen by a regulator or a court",
    "same_party": "the two parties of a transfer or pledge are the same",
    "insufficient_available": "fewer units are available than the command asks for",
    "units_pledged": "the units asked for are pledged",
    "units_unavailable": "the serials asked for are not available units of that holder",
    "pledge_not_active": "the pledge is released or enforced already",
    "claim_not_pending": "the claim was approved or rejected already",
    "peril_not_covered": "the policy does not cover that peril",
    "outside_policy_period": "the loss date is outside the policy period",
    "cover_exceeded": "the claim asks for more tonnes than the policy still covers",
    "sum_insured_exceeded": "the payout is more than the policy's remaining sum insured",
    "claim_exceeded": "the approval grants more tonnes than were claimed",
    "loss_not_confirmed": "a physical loss has not been confirmed, for that many tonnes, by the "
    "ticket's issuer or a regulator",
    "standard_mismatch": "the ticket's standard differs from its project's",
    "standard_not_eligible": "the standard may not be used for compliance in that scheme",
    "emissions_not_recorded": "the regulator has not recorded verified emissions for that period",
    "cap_exceeded": "the retirement would exceed a compliance offset limit",
    "batch_too_large": "a batch holds more items than allowed",
    "payload_too_large": "the request body is larger than allowed",
    "headers_too_large": "the request's headers are larger than allowed",
    "request_timeout": "the request's headers or body did not arrive in time",
    "too_many_connections": "the server or this client has as many connections open as allowed",
    "unsigned": "the command carries no signature by its actor",
    "bad_signature": "a signature is malformed, covers other content, or does not verify",
    "unknown_key": "the signing key is not a registered key of the signer",
    "revoked_key": "the signing key was revoked or rotated out",
    "key_not_yet_valid": "the signing key was registered after the position of the record",
    "stale_signature": "the signature's created time is outside the accepted window",
    "replay": "this exact signed request was received before",
    "non_canonical": "the body is not in the canonical encoding",
    "nesting_too_deep": "the body nests arrays and objects deeper than allowed",
    "unknown_checkpoint": "no signed checkpoint matches",
    "consent_missing": "a party whose consent the command needs has not signed it",
    "conflict": "concurrent writes kept conflicting; retry the command",
    "log_inconsistent": "the log does not extend what was signed or witnessed before: do not retry, "
    "investigate",
    "operation_failed": "an operation on the store (backup, restore, migration) did not complete",
    "store_unavailable": "the store could not be reached, or stayed busy too long; retry with the "
    "same command id",
    "no_registry": "the database holds no registry: it does not exist, or was never initialised",
    "registry_served": "a server is serving the registry, and the operation needs it to itself",
}


class DomainError(Exception):
    """A refused command: a stable machine code, a sentence with the numbers, and the details."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        if code not in CODES:
            raise ValueError(f"unregistered error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}

    def __repr__(self) -> str:
        return f"DomainError({self.code!r}, {self.message!r})"


def invalid(message: str, **details: Any) -> DomainError:
    return DomainError("invalid_argument", message, **details)
