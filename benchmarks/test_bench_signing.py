"""Ed25519 and the RFC 9421 envelope: what signing and verifying one command costs.

    .venv/bin/pytest benchmarks --benchmark-enable
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api.http_signatures import sign_request
from ledger import keys as K
from ledger.signing import canonical_json, check_signature, sign

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()
PUBLIC_TEXT = K.public_text(KEY)
COMMAND = {"command": "transfer", "actor": "exchange-0", "command_id": "trade/exchange-0/SX-1",
           "args": {"trade_id": "SX-1", "seller": "holder-0001", "buyer": "holder-0002",
                    "ticket_no": "SM-0000001", "quantity_t": 100, "price": "15.00",
                    "mode": "negotiated"}}
BODY = canonical_json(COMMAND)
MESSAGE = b"x" * 200


@pytest.mark.benchmark(group="ed25519")
def test_ed25519_sign(benchmark) -> None:
    benchmark(KEY.sign, MESSAGE)


@pytest.mark.benchmark(group="ed25519")
def test_ed25519_verify(benchmark) -> None:
    sig = KEY.sign(MESSAGE)
    benchmark(PUBLIC.verify, sig, MESSAGE)


@pytest.mark.benchmark(group="ed25519")
def test_keys_verify_from_text(benchmark) -> None:
    """ledger.keys.verify with the key in text form (as the ledger stores it): parse + verify."""
    sig = KEY.sign(MESSAGE)
    assert benchmark(K.verify, PUBLIC_TEXT, sig, MESSAGE)


@pytest.mark.benchmark(group="envelope")
def test_canonical_json(benchmark) -> None:
    benchmark(canonical_json, COMMAND)


@pytest.mark.benchmark(group="envelope")
def test_sign_command(benchmark) -> None:
    """ledger.signing.sign: content digest, signature base, Ed25519."""
    benchmark(sign, KEY, "exchange-0", BODY, created=1_700_000_000)


@pytest.mark.benchmark(group="envelope")
def test_check_signature(benchmark) -> None:
    """ledger.signing.check_signature: parse the base, re-check digest/method/path, verify."""
    sig = sign(KEY, "exchange-0", BODY, created=1_700_000_000)
    benchmark(check_signature, sig, body=BODY, method="POST", path="/v1/commands", consent=False,
              public_key=PUBLIC_TEXT)


@pytest.mark.benchmark(group="envelope")
def test_sign_http_request(benchmark) -> None:
    """api.http_signatures.sign_request: what a client does per write."""
    benchmark(sign_request, KEY, method="POST", path="/v1/transfers", body=BODY,
              created=1_700_000_000)
