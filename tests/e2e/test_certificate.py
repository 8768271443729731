"""A retirement certificate fetched from a real server verifies as it is, saved to a file, with
`carbon-ledger verify-proof FILE --operator-key KEY`; an edited one does not."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest


@pytest.fixture(scope="module")
def server(serve: Callable[..., Any], demo_registry_files: Callable[[Path], None],
           tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("certificate") / "server"
    demo_registry_files(root)
    return serve(root)


def fetch(server: Any, path: str) -> Any:
    response = httpx.get(server.base_url + path, timeout=30)
    assert response.status_code == 200, response.text
    return response


def operator_key(server: Any) -> str:
    return fetch(server, "/v1/participants/registry").json()["keys"][0]["public_key"]


@pytest.mark.parametrize("retirement_id", ["RT-2021-001", "RT-2022-001"])
def test_a_served_certificate_verifies_as_it_is(server: Any, carbon_ledger: Any, tmp_path: Path,
                                                retirement_id: str) -> None:
    served = fetch(server, f"/v1/retirements/{retirement_id}/certificate")
    saved = tmp_path / "certificate.json"
    saved.write_bytes(served.content)  # byte for byte what the server sent
    done = carbon_ledger("verify-proof", str(saved), "--operator-key", operator_key(server),
                         cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    retirement = served.json()["retirement"]
    assert "proven as of checkpoint" in done.stdout
    assert f"retirement {retirement_id} of {retirement['quantity_t']:,} t by {retirement['holder']}" in done.stdout
    as_json = carbon_ledger("verify-proof", str(saved), "--operator-key", operator_key(server),
                            "--json", cwd=tmp_path)
    facts = json.loads(as_json.stdout)
    assert facts["ok"] and facts["certificate"] and facts["id"] == retirement_id
    assert facts["cosigned_by"] == ["fujian-eco"]


def test_an_edited_certificate_fails(server: Any, carbon_ledger: Any, tmp_path: Path) -> None:
    cert = fetch(server, "/v1/retirements/RT-2021-001/certificate").json()
    cert["retirement"]["beneficiary"] = "someone who did not retire anything"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(cert, ensure_ascii=False), encoding="utf-8")
    done = carbon_ledger("verify-proof", str(edited), "--operator-key", operator_key(server),
                         cwd=tmp_path)
    assert done.returncode == 1
    assert "proof rejected" in done.stderr and "beneficiary" in done.stderr
    assert "Traceback" not in done.stderr
