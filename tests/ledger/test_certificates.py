"""A retirement certificate is what `GET /v1/retirements/{id}/certificate` serves: the retirement as
a person reads it, with the proof bundle that proves it. `verify_bundle` (so `carbon-ledger
verify-proof`) takes it as it is, and refuses it when any of its words differ from the proof."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.application import Registry
from ledger.proofs import CERTIFICATE_FORMAT, ProofError, certificate, verify_bundle


@pytest.fixture(scope="module")
def registry(demo_on_disk: Callable[[Path], Registry],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    app = demo_on_disk(tmp_path_factory.mktemp("certificates"))
    yield app
    app.close()


def operator_key(app: Registry) -> str:
    genesis = app.projection().genesis
    assert genesis is not None
    return genesis.operator_key


def offline(data: dict[str, Any]) -> dict[str, Any]:
    """As a file would carry it."""
    return json.loads(json.dumps(data))


def retirement_ids(app: Registry) -> list[str]:
    return sorted(app.projection().retirements)


def test_every_demo_retirement_has_a_certificate_that_verifies(registry: Registry) -> None:
    ids = retirement_ids(registry)
    purposes = {registry.view(lambda p, r=r: p.retirement(r))["purpose"] for r in ids}
    assert len(ids) >= 2 and len(purposes) >= 2
    for rid in ids:
        cert = offline(certificate(registry, rid))
        assert cert["format"] == CERTIFICATE_FORMAT
        # the words a person reads are the registry's own view of the retirement
        assert cert["retirement"] == registry.view(lambda p, r=rid: p.retirement(r))
        facts = verify_bundle(cert, operator_key(registry))
        assert facts["ok"] and facts["certificate"] is True
        assert (facts["kind"], facts["id"]) == ("retirement", rid)
        assert facts["quantity_t"] == cert["retirement"]["quantity_t"]


def _edits() -> list[tuple[str, Callable[[dict[str, Any]], None], str]]:
    def set_field(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda c: c["retirement"].__setitem__(name, value)

    def serial(c: dict[str, Any]) -> None:
        c["retirement"]["lines"][0]["serials"][0]["last_serial"] = "SM-0000001-0000001"

    def line_tonnes(c: dict[str, Any]) -> None:
        c["retirement"]["lines"][0]["quantity_t"] += 1

    return [
        ("quantity", lambda c: c["retirement"].__setitem__("quantity_t", c["retirement"]["quantity_t"] + 1),
         "quantity_t"),
        ("holder", set_field("holder", "tonghai-nickel-2"), "holder"),
        ("beneficiary", set_field("beneficiary", "someone else"), "beneficiary"),
        ("purpose", set_field("purpose", "voluntary"), "purpose"),
        ("details", set_field("details", "edited"), "details"),
        ("id", set_field("retirement_id", "RT-1999-001"), "retirement_id"),
        ("serial", serial, "lines"),
        ("line tonnes", line_tonnes, "lines"),
        ("an added field", set_field("verified_by", "a famous auditor"), "verified_by"),
        ("a dropped field", lambda c: c["retirement"].pop("beneficiary"), "beneficiary"),
        ("an added top-level field", lambda c: c.__setitem__("note", "approved"), "note"),
        ("the format", lambda c: c.__setitem__("format", "carbon-ledger-certificate/0"), "format"),
    ]


@pytest.mark.parametrize(("what", "edit", "named"), _edits(), ids=[e[0] for e in _edits()])
def test_an_edited_certificate_is_refused_naming_what_differs(
        registry: Registry, what: str, edit: Callable[[dict[str, Any]], None], named: str) -> None:
    cert = offline(certificate(registry, retirement_ids(registry)[0]))
    edit(cert)
    with pytest.raises(ProofError) as refused:
        verify_bundle(cert, operator_key(registry))
    assert named in str(refused.value), (what, str(refused.value))


def test_a_certificate_with_another_retirements_proof_is_refused(registry: Registry) -> None:
    first, second = retirement_ids(registry)[:2]
    cert = offline(certificate(registry, first))
    cert["proof"] = offline(certificate(registry, second))["proof"]
    with pytest.raises(ProofError, match=f"proves retirement {second}, not {first}"):
        verify_bundle(cert, operator_key(registry))


def test_an_edited_proof_inside_a_certificate_is_refused(registry: Registry) -> None:
    cert = offline(certificate(registry, retirement_ids(registry)[0]))
    edited = copy.deepcopy(cert)
    edited["proof"]["leaves"][0]["value"]["quantity_t"] += 1
    edited["retirement"]["quantity_t"] += 1   # told the same lie twice
    with pytest.raises(ProofError, match="not in the checkpoint's state commitment"):
        verify_bundle(edited, operator_key(registry))


def test_a_certificate_checked_with_another_operator_key_is_refused(registry: Registry) -> None:
    cert = offline(certificate(registry, retirement_ids(registry)[0]))
    with pytest.raises(ProofError):
        verify_bundle(cert, "ed25519:" + "A" * 43 + "=")
