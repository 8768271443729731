"""Signed commands: canonical JSON bodies and RFC 9421 signatures over them.

One envelope serves the command line and HTTP alike. The body is the command as canonical JSON
(RFC 8785 for the values a command may hold: objects with ASCII keys sorted, no insignificant
white space, UTF-8, integers only — no floats). The actor signs an RFC 9421 signature base that
covers `@method`, `@path` and the body's RFC 9530 `content-digest`, with the parameters
`created`, `keyid`, `nonce`, `alg="ed25519"` and `tag="carbon-ledger"`. A second party's
consent (the pledgor of a pledge, the new key of a rotation) is a signature over
`content-digest` alone, tagged `carbon-ledger-consent`.

The ledger stores the body, the method and path, and every signature base and signature with
the command's record, so an auditor can re-check each signature from the log alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domain.errors import DomainError
from ledger import keys as K

ACTOR_TAG = "carbon-ledger"
CONSENT_TAG = "carbon-ledger-consent"
ACTOR_COMPONENTS = ("@method", "@path", "content-digest")
CONSENT_COMPONENTS = ("content-digest",)
COMMANDS_PATH = "/v1/commands"
WINDOW_PAST_S = 300  # a signature may be at most 5 minutes old when it reaches the ledger
WINDOW_FUTURE_S = 60  # and at most 1 minute ahead of the ledger's clock
MAX_BODY_BYTES = 4 * 1024 * 1024
# Levels of arrays and objects in a body. A command needs five at most (the command, its args, a
# list of lines, a line, its serials); the parsers and encoders recurse once per level, so a body
# of a few thousand levels would exhaust the stack of whoever reads it, the auditor included.
MAX_DEPTH = 32
_MAX_INT = 2**53 - 1


# Canonical JSON ------------------------------------------------------------------------------

def canonical_json(obj: Any, *, checked: bool = False) -> bytes:
    """The one byte encoding of a JSON value that the ledger signs and hashes.

    `checked=True` skips the type check for values that already passed it (parsed bodies,
    the ledger's own state).
    """
    if not checked:
        _check_canonical_types(obj)
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                      allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:  # half of a surrogate pair: JSON can escape it, UTF-8 cannot
        raise DomainError("non_canonical", f"a string holds a lone surrogate "
                          f"(U+{ord(e.object[e.start]):04X}), which canonical JSON (UTF-8, "
                          "no escapes) cannot carry") from None


_SCALARS = (str, bool, type(None))


def _check_canonical_types(obj: Any) -> None:
    stack = [obj]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is dict:
            for k, v in value.items():
                if type(k) is not str or not k.isascii():
                    raise DomainError("non_canonical", f"object keys must be ASCII strings, not {k!r}")
                if type(v) not in _SCALARS:
                    stack.append(v)
        elif kind is list:
            stack.extend(v for v in value if type(v) not in _SCALARS)
        elif kind is int:
            if not -_MAX_INT <= value <= _MAX_INT:
                raise DomainError("non_canonical", f"integer {value} is beyond ±2^53")
        elif kind not in _SCALARS:
            raise DomainError("non_canonical", f"{kind.__name__} values are not allowed (no floats: "
                              "tonnes are integers, money is a decimal string)")


_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_SIXTEEN_ZEROS = b"0" * 16  # in a body so translated: a run of 16 digits


def _checked_int(text: str) -> int:
    value = int(text)
    if not -_MAX_INT <= value <= _MAX_INT:
        raise DomainError("non_canonical", f"integer {value} is beyond ±2^53")
    return value


def _ascii_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    for k, _ in pairs:
        if not k.isascii():
            raise DomainError("non_canonical", f"object keys must be ASCII strings, not {k!r}")
    return dict(pairs)


def _no_float(text: str) -> Any:
    raise DomainError("non_canonical", f"{text} is a fractional number; tonnes are integers and money "
                      "is a decimal string like \"15.00\"")


# A key with a non-ASCII character: one, then the rest of a string (escapes skipped), then a
# colon. A body without one has ASCII keys only (a match in a value takes the slower way too).
_NON_ASCII_KEY = re.compile(rb'[\x80-\xff](?:[^"\\]|\\.)*":')
_NOT_FAST = object()


class _Fraction(Exception):
    pass


def _refuse_fraction(text: str) -> Any:
    raise _Fraction(text)


# msgspec's JSON, which parses and writes a body back in a quarter of json's time: the parser
# stops at the first float (float_hook), the writer sorts keys and leaves out white space.
_decode_json = msgspec.json.Decoder(float_hook=_refuse_fraction).decode
_encode_json = msgspec.json.Encoder(order="sorted").encode


def _parsed_if_canonical(body: bytes) -> Any:
    """msgspec's parse of the body when msgspec writes it back the same (keys sorted, compact),
    else _NOT_FAST. For a body with no integer of 16 digits (the caller's check) and no key that
    is not ASCII (checked here), with no float (msgspec stops at one): its value is then json's,
    and msgspec writes it as canonical_json does (UTF-8, escapes included), so the body is
    canonical exactly when this gives it back. Anything else (not JSON, not UTF-8, not
    canonical, a float, a lone surrogate) is left to json, which says what is wrong."""
    if not body.isascii() and _NON_ASCII_KEY.search(body) is not None:
        return _NOT_FAST
    try:
        obj = _decode_json(body)
        if _encode_json(obj) == body:
            return obj
    except (msgspec.MsgspecError, _Fraction, RecursionError):
        pass
    return _NOT_FAST


def _deeper_than(obj: Any, levels: int) -> bool:
    """Whether `obj` nests arrays and objects more than `levels` deep (`[1]` is one level).
    Level by level, without recursion: the value may be as deep as a parser allowed."""
    level = [obj] if type(obj) in (dict, list) else []
    depth = 0
    while level:
        depth += 1
        if depth > levels:
            return True
        inner = []
        for container in level:
            for value in (container.values() if type(container) is dict else container):
                if type(value) is dict or type(value) is list:
                    inner.append(value)
        level = inner
    return False


def _too_deep() -> DomainError:
    return DomainError("nesting_too_deep", f"the body nests arrays and objects more than "
                       f"{MAX_DEPTH} levels deep; at most {MAX_DEPTH} are accepted")


def _check_depth(body: bytes, obj: Any) -> None:
    # A body with few brackets cannot be deep: nearly every command is answered by the count.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _deeper_than(obj, MAX_DEPTH):
        raise _too_deep()


def parse_canonical(body: bytes) -> Any:
    """Parse a body and insist it is already in canonical form (and at most MAX_DEPTH deep)."""
    if len(body) > MAX_BODY_BYTES:
        raise DomainError("invalid_argument", f"the body is {len(body)} bytes; at most "
                          f"{MAX_BODY_BYTES} are accepted")
    try:
        short = _SIXTEEN_ZEROS not in body.translate(_DIGITS_AS_ZEROS)
        if short:
            # Every integer has at most 15 digits (below 2^53): with ASCII keys and no float,
            # msgspec parses and writes it back in a quarter of json's time.
            obj = _parsed_if_canonical(body)
            if obj is not _NOT_FAST:
                _check_depth(body, obj)
                return obj
        if short and body.isascii():
            # Every key is ASCII and every integer has at most 15 digits: the checks the hooks
            # below make per key and per integer cannot fail.
            obj = json.loads(body.decode("ascii"), parse_float=_no_float,
                             parse_constant=_no_float)
        else:
            obj = json.loads(body.decode("utf-8"), parse_float=_no_float,
                             parse_constant=_no_float, parse_int=_checked_int,
                             object_pairs_hook=_ascii_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DomainError("invalid_argument", f"the body is not JSON: {e}") from None
    except RecursionError:  # hundreds of levels deep: far past MAX_DEPTH wherever it is called
        raise _too_deep() from None
    _check_depth(body, obj)
    if canonical_json(obj, checked=True) != body:
        raise DomainError("non_canonical", "the body is not in canonical JSON form (keys sorted, no "
                          "white space, UTF-8 without escapes); sign and send canonical_json(command)")
    return obj


def content_digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


# RFC 9421 signature bases ------------------------------------------------------------------

def signature_params(components: tuple[str, ...], *, created: int, keyid: str, nonce: str,
                     tag: str) -> str:
    inner = " ".join(f'"{c}"' for c in components)
    return f'({inner});created={created};keyid="{keyid}";nonce="{nonce}";alg="ed25519";tag="{tag}"'


def signature_base(values: dict[str, str], params: str) -> str:
    lines = [f'"{name}": {value}' for name, value in values.items()]
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines)


_PARAMS = re.compile(r'^\((?P<components>(?:"[a-z@-]+"(?: "[a-z@-]+")*)?)\)(?P<rest>(?:;[a-z]+=(?:[0-9]+|"[^"\\]*"))*)$')
_LINE = re.compile(r'"([a-z@-]+)": (.*)')
_PARAM = re.compile(r';([a-z]+)=([0-9]+|"[^"\\]*")')
_MAX_PARAM_DIGITS = 18  # a created time in Unix seconds has 10


@dataclass(frozen=True)
class ParsedBase:
    components: dict[str, str]
    params: dict[str, Any]
    covered: tuple[str, ...]


# A command's bases are read several times on its way in, so parsed bases are cached; but a base
# comes from a request's headers before its signature is checked, so only bases of the size
# clients make (about 250 characters) are kept: at most 4,096 of them, a few megabytes in all.
_CACHED_BASE_CHARS = 1024


def parse_base(base: str) -> ParsedBase:
    """Split a signature base into its component values and parameters; DomainError if malformed."""
    if len(base) <= _CACHED_BASE_CHARS:
        return _parse_base_cached(base)
    return _parse_base(base)


def _parse_base(base: str) -> ParsedBase:
    lines = base.split("\n")
    if not lines or not lines[-1].startswith('"@signature-params": '):
        raise DomainError("bad_signature", "the signature base does not end with @signature-params")
    components: dict[str, str] = {}
    for line in lines[:-1]:
        m = _LINE.fullmatch(line)
        if not m or m.group(1) in components:
            raise DomainError("bad_signature", f"malformed signature base line {line!r}")
        components[m.group(1)] = m.group(2)
    raw_params = lines[-1][len('"@signature-params": '):]
    m = _PARAMS.match(raw_params)
    if not m:
        raise DomainError("bad_signature", "malformed @signature-params")
    covered = tuple(c.strip('"') for c in m.group("components").split()) if m.group("components") else ()
    if covered != tuple(components):
        raise DomainError("bad_signature", "the covered components do not match the base's lines")
    params: dict[str, Any] = {}
    for k, v in _PARAM.findall(m.group("rest")):
        if v[0] != '"' and len(v) > _MAX_PARAM_DIGITS:  # int() itself stops at 4,300 digits
            raise DomainError("bad_signature", f"the signature parameter {k} has {len(v)} digits; "
                              f"at most {_MAX_PARAM_DIGITS} are accepted")
        params[k] = int(v) if v[0] != '"' else v[1:-1]
    return ParsedBase(components, params, covered)


_parse_base_cached = lru_cache(maxsize=4096)(_parse_base)


@dataclass(frozen=True)
class Signature:
    """One signature as stored: who signed, with which key, the exact base, the signature bytes."""

    signer: str
    key_id: str
    base: str
    signature: bytes

    def to_record(self) -> dict[str, Any]:
        return {"signer": self.signer, "key_id": self.key_id, "base": self.base,
                "signature": self.signature}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Signature:
        return cls(data["signer"], data["key_id"], data["base"], bytes(data["signature"]))


@dataclass(frozen=True)
class SignedCommand:
    """A command body with its signatures, as it reaches the ledger over any path."""

    body: bytes
    signatures: tuple[Signature, ...] = field(default_factory=tuple)
    method: str = "POST"
    path: str = COMMANDS_PATH


def sign(key: Ed25519PrivateKey, signer: str, body: bytes, *, created: int, method: str = "POST",
         path: str = COMMANDS_PATH, consent: bool = False, nonce: str | None = None) -> Signature:
    kid = K.signing_key_id(key)
    nonce = nonce or secrets.token_urlsafe(16)
    if consent:
        values = {"content-digest": content_digest(body)}
        params = signature_params(CONSENT_COMPONENTS, created=created, keyid=kid, nonce=nonce,
                                  tag=CONSENT_TAG)
    else:
        values = {"@method": method, "@path": path, "content-digest": content_digest(body)}
        params = signature_params(ACTOR_COMPONENTS, created=created, keyid=kid, nonce=nonce,
                                  tag=ACTOR_TAG)
    base = signature_base(values, params)
    return Signature(signer, kid, base, key.sign(base.encode("utf-8")))


def check_signature(sig: Signature, *, body: bytes, method: str, path: str, consent: bool,
                    public_key: str) -> ParsedBase:
    """Check one signature against the body it claims to cover; DomainError(bad_signature) if not."""
    parsed = check_base(sig, body=body, method=method, path=path, consent=consent)
    if not K.verify(public_key, sig.signature, sig.base.encode("utf-8")):
        raise DomainError("bad_signature", f"the signature by {sig.signer} with key {sig.key_id} "
                          "does not verify")
    return parsed


def check_base(sig: Signature, *, body: bytes, method: str, path: str, consent: bool) -> ParsedBase:
    """Every check of a signature but the Ed25519 verification itself (which an auditor batches)."""
    parsed = parse_base(sig.base)
    expected = CONSENT_COMPONENTS if consent else ACTOR_COMPONENTS
    tag = CONSENT_TAG if consent else ACTOR_TAG
    if parsed.covered != expected or parsed.params.get("tag") != tag:
        raise DomainError("bad_signature", f"a {'consent' if consent else 'actor'} signature must cover "
                          f"{', '.join(expected)} with tag {tag}")
    if parsed.params.get("alg") != "ed25519" or parsed.params.get("keyid") != sig.key_id:
        raise DomainError("bad_signature", "the signature parameters name another key or algorithm")
    if not isinstance(parsed.params.get("created"), int) or not parsed.params.get("nonce"):
        raise DomainError("bad_signature", "the signature has no created time or nonce")
    if parsed.components["content-digest"] != content_digest(body):
        raise DomainError("bad_signature", "the signature covers another body (content-digest differs)")
    if not consent and (parsed.components["@method"] != method or parsed.components["@path"] != path):
        raise DomainError("bad_signature", "the signature covers another method or path")
    return parsed


def sign_with_keyring(keyring: K.Keyring, name: str, actor: str, command_id: str,
                      args: dict[str, Any], created: int,
                      consents: Iterable[str] | None = None) -> SignedCommand:
    """Build and sign a command the way a client holding these keys would (demo and tests).

    `consents`: the parties whose keys sign their consent to the body; by default a pledge's
    pledgor, when the keyring holds its key. (A key rotation is countersigned by its new key
    either way.)"""
    args = dict(args)
    if name in ("register_participant", "initialise") and "public_key" not in args:
        pid = args.get("participant_id") or args.get("operator_id")
        if isinstance(pid, str):
            args["public_key"] = K.public_text(keyring.get_or_create(pid))
    new_key = None
    if name == "rotate_key" and "new_public_key" not in args and isinstance(args.get("participant_id"), str):
        new_key = keyring.prepare_rotation(args["participant_id"])
        args["new_public_key"] = K.public_text(new_key)
    body = canonical_json({"command": name, "actor": actor, "command_id": command_id, "args": args})
    sigs = [sign(keyring.get_or_create(actor) if name == "initialise" else keyring.get(actor),
                 actor, body, created=created)]
    if consents is None:
        pledgor = args.get("pledgor") if name == "pledge" else None
        consents = [pledgor] if isinstance(pledgor, str) and keyring.has(pledgor) else []
    for party in dict.fromkeys(consents):
        sigs.append(sign(keyring.get(party), party, body, created=created, consent=True))
    if new_key is not None:
        sigs.append(sign(new_key, args["participant_id"], body, created=created, consent=True))
    return SignedCommand(body=body, signatures=tuple(sigs))
