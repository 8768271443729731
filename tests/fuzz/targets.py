"""Fuzz targets: what the registry parses from strangers, each allowed one documented refusal.

  canonical          ledger.signing.parse_canonical, then domain.commands.parse (every write's
                     body, as the server reads it): a command, or DomainError invalid_argument /
                     non_canonical / nesting_too_deep; what parse_canonical accepts is canonical
  signature_headers  api.http_signatures.parse_headers, base_for and ledger.signing.parse_base
                     (the Signature-Input and Signature headers of every signed request): the
                     signatures, or DomainError bad_signature
  proof_bundle       ledger.proofs.verify_bundle (a bank's offline check): the facts, or
                     ProofError
  export_file        ledger.audit.audit_export and its reader (an auditor's file): a report,
                     passing or naming its first failure, or DomainError invalid_argument

Anything else escaping (a TypeError, a RecursionError, a RuntimeError "no verdict", …) is a
finding. Run coverage-guided with atheris (`ops/fuzz TARGET --seconds N`, or
`python tests/fuzz/targets.py TARGET [libFuzzer flags] [corpus dirs]`); tests/fuzz/test_fuzz.py
replays every file of tests/fuzz/corpus/TARGET/ through the same function as a normal test.

The proof bundles and exports are signed by a fixed operator key (derived from a constant), so
that mutated files are checked against the key their seeds were made with.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
_OPERATOR_SEED = hashlib.sha256(b"carbon-ledger fuzz operator key").digest()


class Finding(AssertionError):
    """A fuzz input made the code do something other than its documented refusal."""


def operator_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(_OPERATOR_SEED)


def operator_public() -> str:
    from ledger.keys import public_text

    return public_text(operator_key())


def _refused_with(e: Exception, codes: tuple[str, ...]) -> None:
    from domain.errors import DomainError

    if not isinstance(e, DomainError):
        raise e
    if e.code not in codes:
        raise Finding(f"refused with {e.code}, not one of {codes}: {e.message}") from e


# Targets ---------------------------------------------------------------------------------------------

def canonical(data: bytes) -> None:
    from domain.errors import DomainError
    from ledger.signing import canonical_json, parse_canonical

    try:
        value = parse_canonical(data)
    except DomainError as e:
        _refused_with(e, ("invalid_argument", "non_canonical", "nesting_too_deep"))
        return
    if canonical_json(value) != data:  # one encoding per value: what is accepted is canonical
        raise Finding(f"accepted a body that is not in canonical form: {data[:80]!r}")
    from domain import commands as C

    try:
        C.parse(value)
    except DomainError as e:
        _refused_with(e, ("invalid_argument", "batch_too_large"))


def signature_headers(data: bytes) -> None:
    from api import http_signatures as H
    from domain.errors import DomainError
    from ledger.signing import parse_base

    text = data.decode("latin-1")  # as Starlette hands header values over
    inputs, _, sigs = text.partition("\n")
    headers = {k: v for k, v in (("signature-input", inputs), ("signature", sigs)) if v}
    try:
        for wire in H.parse_headers(headers):
            for query, digest in (("", "sha-256=:AAAA:"), ("as_of=1", None)):
                try:
                    base = H.base_for(wire, method="POST", path="/v1/transfers", query=query,
                                      digest_header=digest)
                except DomainError as e:
                    _refused_with(e, ("bad_signature",))
                    continue
                parse_base(base)  # what the server reads created, nonce and tag from
    except DomainError as e:
        _refused_with(e, ("bad_signature",))


def proof_bundle(data: bytes) -> None:
    from ledger.proofs import ProofError, verify_bundle

    try:
        bundle = json.loads(data)
    except (ValueError, RecursionError):
        return  # not JSON: refused before the verifier (see test_fuzz.py for the CLI)
    try:
        facts = verify_bundle(bundle, operator_public())
    except ProofError:
        return
    if not isinstance(facts, dict) or facts.get("ok") is not True:
        raise Finding(f"verify_bundle returned {facts!r} instead of raising ProofError")


_EXPORT_DIR: list[Path] = []


def export_file(data: bytes) -> None:
    from ledger.audit import audit_export

    if not _EXPORT_DIR:
        _EXPORT_DIR.append(Path(tempfile.mkdtemp(prefix="cl-fuzz-export-")))
    path = _EXPORT_DIR[0] / "fuzzed.export"
    path.write_bytes(data)
    try:
        report = audit_export(path, operator_public(), workers=1)
    except Exception as e:  # noqa: BLE001 - only the documented refusal may come out
        _refused_with(e, ("invalid_argument",))
        return
    if not report.ok and report.failure is None:
        raise Finding("the audit failed without naming where")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "canonical": canonical, "signature_headers": signature_headers,
    "proof_bundle": proof_bundle, "export_file": export_file,
}
# libFuzzer's -max_len per target (the seeds of some are larger than its default 4,096)
MAX_LEN = {"canonical": 8192, "signature_headers": 16384, "proof_bundle": 65536,
           "export_file": 65536}
# The project's modules, instrumented for coverage when atheris runs
INSTRUMENTED = ("domain", "ledger", "api")


# Corpus files that still find a hole: the test replays them as xfail(strict) until it is fixed,
# and a fuzzing run leaves them out (to look for new ones).
KNOWN: dict[str, str] = {}




def escape(target: str, data: bytes) -> str | None:
    """What escapes the target for this input: its exception's type and the words of its
    message (numbers aside), or None: two crashes with one escape are one hole."""
    try:
        TARGETS[target](data)
    except BaseException as e:  # noqa: BLE001 - that is what is being classified
        words = [w for w in str(e).split()[:6] if not any(ch.isdigit() for ch in w)]
        return f"{type(e).__name__}: {' '.join(words)}"
    return None


# Seeds ------------------------------------------------------------------------------------------------

def make_seeds(out: Path = CORPUS) -> dict[str, int]:
    """Write the seed corpus (valid inputs of every kind) under out/TARGET/seed-*; their count."""
    import time

    from api.http_signatures import sign_request
    from ledger import demo
    from ledger.application import Registry
    from ledger.audit import export
    from ledger.keys import Keyring, write_private
    from ledger.proofs import bundle
    from ledger.signing import canonical_json

    written: dict[str, int] = {}

    def put(target: str, name: str, data: bytes) -> None:
        folder = out / target
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"seed-{name}").write_bytes(data)
        written[target] = written.get(target, 0) + 1

    with tempfile.TemporaryDirectory(prefix="cl-fuzz-seeds-") as tmp:
        keys = Keyring(Path(tmp) / "keys")
        keys.folder.mkdir(parents=True)  # type: ignore[union-attr]
        write_private(keys.path(demo.OPERATOR[0]), operator_key())
        app = Registry(f"sqlite:///{tmp}/registry.db", keyring=keys)
        try:
            steps = list(demo.story())
            for i, (name, actor, command_id, args) in enumerate(steps):
                body = canonical_json({"command": name, "actor": actor,
                                       "command_id": command_id, "args": args})
                if i % 3 == 0:
                    put("canonical", f"{i:02d}-{name}", body)
            key = keys.get_or_create("fuzz-client")
            for i, (method, path, query, body, consent) in enumerate([
                    ("POST", "/v1/transfers", "", b'{"a":1}', False),
                    ("POST", "/v1/pledges", "", b'{"a":2}', True),
                    ("GET", "/v1/accounts/x/balances", "as_of=5", None, False)]):
                h = sign_request(key, method=method, path=path, query=query, body=body,
                                 created=int(time.time()), consents=[key] if consent else None)
                put("signature_headers", f"{i}", (h["Signature-Input"] + "\n" + h["Signature"])
                    .encode("latin-1"))
            demo.load(app)
            checkpointer = app.operator_checkpointer()
            assert checkpointer is not None
            checkpointer.make()
            put("proof_bundle", "pledge", json.dumps(bundle(app, "pledge", "PL-2021-001"))
                .encode())
            put("proof_bundle", "retirement", json.dumps(
                bundle(app, "retirement", "RT-2021-001")).encode())
        finally:
            app.close()
        small = Registry(f"sqlite:///{tmp}/small.db", keyring=keys)
        try:
            for name, actor, command_id, args in demo.story():
                small.submit(name, actor, command_id, args)
                if name == "issue_ticket":
                    break
            checkpointer = small.operator_checkpointer()
            assert checkpointer is not None
            checkpointer.make()
            export(small.recorder, Path(tmp) / "small.export")
        finally:
            small.close()
        put("export_file", "small", (Path(tmp) / "small.export").read_bytes())
    return written


# Running under atheris ------------------------------------------------------------------------------

def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        print(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer flags] [corpus dirs]",
              file=sys.stderr)
        sys.exit(2)
    import atheris

    name = argv[1]
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        import api.http_signatures  # noqa: F401
        import ledger.audit  # noqa: F401
        import ledger.proofs  # noqa: F401
        import ledger.signing  # noqa: F401
    target = TARGETS[name]
    flags = list(argv[2:])
    if not any(a.startswith("-max_len=") for a in flags):
        flags.insert(0, f"-max_len={MAX_LEN[name]}")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    atheris.Setup([argv[0], *flags], target)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    main(sys.argv)
