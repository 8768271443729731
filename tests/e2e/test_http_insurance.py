"""Rules edition 2 over HTTP, through a real server: the insurer alone is refused at each step,
and the insured, the forestry bureau and the court each sign their part with api.client.

The demo story (posted by the `demo_world` fixture) founds the registry on the latest edition.
Here `picc-fujian` insures tonghai-nickel's SM-0000001 units, which a court then freezes.
"""

from __future__ import annotations

from typing import Any

import pytest

from api.client import ApiError

INSURER, INSURED, BUREAU, COURT = "picc-fujian", "tonghai-nickel", "sanming-forestry", "jiangle-court"
POLICY = {"policy_id": "POL-H-001", "insured": INSURED,
          "lines": [{"ticket_no": "SM-0000001", "quantity_t": 1_000}], "sum_insured": "15000.00",
          "premium": "300.00", "start": "2023-01-01", "end": "2025-12-31", "perils": ["fire"]}
CLAIM = {"claim_id": "CLM-H-001", "policy_id": "POL-H-001", "peril": "fire",
         "loss_date": "2023-04-02", "claimed_t": 80, "description": "山火 (hill fire)"}


def refused(call: Any, status: int, code: str, *words: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    assert (info.value.status, info.value.code) == (status, code), info.value
    for word in words:
        assert word in info.value.detail, info.value.detail
    return info.value


def test_the_insurer_alone_is_refused_at_each_step_and_the_parties_sign_theirs(
        demo_world: Any) -> None:
    insurer = demo_world.client(INSURER)
    position = demo_world.server.position()
    refused(lambda: insurer.command("bind_policy", POLICY), 403, "consent_missing", INSURED)
    policy = insurer.bind_policy(**POLICY, insured_key=demo_world.key(INSURED))
    assert policy["covered_t"] == 1_000
    refused(lambda: insurer.command("file_claim", CLAIM), 403, "not_authorized", INSURED)
    assert demo_world.client(INSURED).file_claim(**CLAIM)["status"] == "pending"
    refused(lambda: insurer.approve_claim("CLM-H-001", 80, "1200.00"), 422, "loss_not_confirmed",
            BUREAU)
    # The bureau reads the claim it is asked about, and confirms what its survey found.
    bureau = demo_world.client(BUREAU)
    assert bureau.get("/v1/claims/CLM-H-001")["loss_confirmation"] is None
    confirmed = bureau.confirm_loss("CLM-H-001", 60, "三林核〔2023〕9号：过火 6 亩，损失 60 t")
    assert (confirmed["confirmed_t"], confirmed["confirmed_by"]) == (60, BUREAU)
    refused(lambda: insurer.approve_claim("CLM-H-001", 80, "1200.00"), 422, "loss_not_confirmed",
            "60", "80")
    # A court freezes the insured's account: its units are cancelled only with the court.
    demo_world.client(COURT).command("freeze", {"holder": INSURED, "reason": "财产保全"},
                                     "h-freeze-tonghai")
    refused(lambda: insurer.approve_claim("CLM-H-001", 60, "900.00"), 403, "consent_missing",
            COURT)
    approved = insurer.approve_claim("CLM-H-001", 60, "900.00",
                                     court_keys=[demo_world.key(COURT)])
    assert approved["cancelled_t"] == 60
    claim = demo_world.client(INSURED).get("/v1/claims/CLM-H-001")
    assert claim["status"] == "approved"
    assert claim["loss_confirmation"]["by"] == BUREAU
    assert demo_world.server.position() > position


def test_the_log_verifies_after_the_http_session(demo_world: Any) -> None:
    done = demo_world.server.cli("verify")
    assert done.returncode == 0, done.stderr
    assert "rules: edition 2 from position" in done.stdout
