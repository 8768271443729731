"""RFC 9421 HTTP message signatures on the wire: the Signature-Input and Signature headers.

The registry's signature base is built by ledger.signing, the same for HTTP and the command line;
this module only moves it in and out of headers. Writes are signed over ("@method" "@path"
"content-digest") with tag "carbon-ledger"; a pledgor's consent over ("content-digest") with tag
"carbon-ledger-consent"; reads over ("@method" "@path" "@query") with tag "carbon-ledger-read".
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domain.errors import DomainError
from ledger import keys as K
from ledger.signing import (
    _PARAM,  # one grammar for signature parameters, here and in the ledger
    ACTOR_COMPONENTS,
    ACTOR_TAG,
    CONSENT_COMPONENTS,
    CONSENT_TAG,
    content_digest,
    signature_base,
    signature_params,
)

READ_TAG = "carbon-ledger-read"
READ_COMPONENTS = ("@method", "@path", "@query")
MAX_SIGNATURES = 4
# What a signature's headers may hold, checked before anything is parsed or kept: four signatures
# take about 1,100 characters in each header, a nonce as clients make it 22 and a key id 32.
MAX_SIGNATURE_HEADER_CHARS = 4096
MAX_NONCE_CHARS = 128
MAX_KEYID_CHARS = 128
# The headers a signature depends on: each may come once (a second copy is not ignored).
SIGNED_HEADERS = {"signature-input": "Signature-Input", "signature": "Signature",
                  "content-digest": "Content-Digest"}
# The key under which a dict of headers made from the raw list (api.server's fast path) names a
# signed header that came more than once: no header has that name.
REPEATED = "\x00repeated"

_MEMBER = re.compile(r'\s*([a-z][a-z0-9_-]*)=(\((?:"[^"]*"(?: "[^"]*")*)?\)(?:;[a-z]+=(?:[0-9]+|"[^"\\]*"))*)\s*')
_SIG_MEMBER = re.compile(r"\s*([a-z][a-z0-9_-]*)=:([A-Za-z0-9+/=]*):\s*")


@dataclass(frozen=True)
class WireSignature:
    label: str
    params: str  # the serialised @signature-params, exactly as received
    covered: tuple[str, ...]
    keyid: str
    tag: str
    signature: bytes


def _split_members(header: str) -> list[str]:
    """Split a structured-field dictionary at top-level commas (not inside quotes or brackets)."""
    if "," not in header:  # one member (every request but a pledge's or a rotation's)
        return [header] if header.strip() else []
    out, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(header):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            out.append(header[start:i])
            start = i + 1
    out.append(header[start:])
    return [m for m in out if m.strip()]


# One signature with its parameters in the order sign_request writes them: what nearly every
# request carries, parsed with one match per header (anything else takes the general way).
_ONE_INPUT = re.compile(r'(?P<label>[a-z][a-z0-9_-]*)=(?P<params>\((?P<covered>"[^"()]*"(?: "[^"()]*")*)\)'
                        rf';created=[0-9]+;keyid="(?P<keyid>[^"\\]{{0,{MAX_KEYID_CHARS}}})";'
                        rf'nonce="[^"\\]{{0,{MAX_NONCE_CHARS}}}";alg="[^"\\]*";tag="(?P<tag>[^"\\]*)")')
_ONE_SIG = re.compile(r"(?P<label>[a-z][a-z0-9_-]*)=:(?P<value>[A-Za-z0-9+/=]*):")


def _parse_one(inputs_header: str, sigs_header: str) -> list[WireSignature] | None:
    m = _ONE_INPUT.fullmatch(inputs_header)
    s = _ONE_SIG.fullmatch(sigs_header)
    if m is None or s is None or m["label"] != s["label"]:
        return None
    try:
        value = binascii.a2b_base64(s["value"], strict_mode=True)
    except binascii.Error:
        return None  # the general way says what is wrong
    covered = tuple(c.strip('"') for c in m["covered"].split())
    return [WireSignature(m["label"], m["params"], covered, m["keyid"], m["tag"], value)]


def parse_headers(headers: Mapping[str, str]) -> list[WireSignature]:
    """The signatures a request carries; DomainError(bad_signature) when the headers are malformed,
    too long, or sent twice. `headers` is Starlette's Headers (which sees every copy of a header)
    or a dict that names a repeated signed header under REPEATED."""
    repeated = headers.get(REPEATED)
    if repeated is None and hasattr(headers, "getlist"):
        repeated = next((n for n in SIGNED_HEADERS if len(headers.getlist(n)) > 1), None)
    if repeated is not None:
        raise DomainError("bad_signature", f"the request has the {SIGNED_HEADERS[repeated]} header "
                          "twice; send it once, with every signature in one header")
    inputs_header = headers.get("signature-input")
    sigs_header = headers.get("signature")
    if not inputs_header and not sigs_header:
        return []
    for name, value in (("Signature-Input", inputs_header), ("Signature", sigs_header)):
        if value is not None and len(value) > MAX_SIGNATURE_HEADER_CHARS:
            raise DomainError("bad_signature", f"the {name} header is {len(value)} characters "
                              f"long; at most {MAX_SIGNATURE_HEADER_CHARS} are accepted")
    if inputs_header and sigs_header:
        one = _parse_one(inputs_header, sigs_header)
        if one is not None:
            return one
    return _parse_general(inputs_header, sigs_header)


def _parse_general(inputs_header: str | None, sigs_header: str | None) -> list[WireSignature]:
    if not inputs_header or not sigs_header:
        raise DomainError("bad_signature", "Signature and Signature-Input headers come together")
    inputs: dict[str, str] = {}
    for member in _split_members(inputs_header):
        m = _MEMBER.fullmatch(member)
        if not m or m.group(1) in inputs:
            raise DomainError("bad_signature", f"malformed Signature-Input member {member.strip()!r}")
        inputs[m.group(1)] = m.group(2)
    values: dict[str, bytes] = {}
    for member in _split_members(sigs_header):
        m = _SIG_MEMBER.fullmatch(member)
        if not m or m.group(1) in values:
            raise DomainError("bad_signature", f"malformed Signature member {member.strip()[:40]!r}")
        try:
            values[m.group(1)] = base64.b64decode(m.group(2), validate=True)
        except ValueError:
            raise DomainError("bad_signature", "a signature is not valid base64") from None
    if set(inputs) != set(values):
        raise DomainError("bad_signature", "Signature and Signature-Input name different labels")
    if len(inputs) > MAX_SIGNATURES:
        raise DomainError("bad_signature", f"at most {MAX_SIGNATURES} signatures per request")
    out = []
    for label, params in inputs.items():
        close = params.index(")")
        inner = params[1:close]
        covered = tuple(c.strip('"') for c in inner.split()) if inner else ()
        found = dict(_PARAM.findall(params, close + 1))
        keyid = found.get("keyid", '""').strip('"')
        tag = found.get("tag", '""').strip('"')
        nonce = found.get("nonce", '""').strip('"')
        for what, value, most in (("key id", keyid, MAX_KEYID_CHARS),
                                  ("nonce", nonce, MAX_NONCE_CHARS)):
            if len(value) > most:
                raise DomainError("bad_signature", f"the {what} of signature {label} is "
                                  f"{len(value)} characters long; at most {most} are accepted")
        out.append(WireSignature(label, params, covered, keyid, tag, values[label]))
    return out


def base_for(sig: WireSignature, *, method: str, path: str, query: str,
             digest_header: str | None) -> str:
    """The signature base a wire signature covers, rebuilt from the request as received."""
    values: dict[str, str] = {}
    for component in sig.covered:
        if component == "@method":
            values[component] = method
        elif component == "@path":
            values[component] = path
        elif component == "@query":
            values[component] = "?" + query
        elif component == "content-digest":
            if digest_header is None:
                raise DomainError("bad_signature", "the signature covers content-digest but the "
                                  "request has no Content-Digest header")
            values[component] = digest_header
        else:
            raise DomainError("bad_signature", f"the signature covers {component}, which this "
                              "registry does not sign")
    return signature_base(values, sig.params)


# Client side ---------------------------------------------------------------------------------

def sign_request(key: Ed25519PrivateKey, *, method: str, path: str, query: str = "",
                 body: bytes | None = None, created: int,
                 consents: list[Ed25519PrivateKey] | None = None) -> dict[str, str]:
    """Headers for a signed request: Content-Digest (with a body), Signature-Input, Signature."""
    kid = K.signing_key_id(key)
    headers: dict[str, str] = {}
    inputs: list[str] = []
    sigs: list[str] = []
    if body is not None:
        digest = content_digest(body)
        headers["Content-Digest"] = digest
        params = signature_params(ACTOR_COMPONENTS, created=created, keyid=kid,
                                  nonce=secrets.token_urlsafe(16), tag=ACTOR_TAG)
        values = {"@method": method, "@path": path, "content-digest": digest}
    else:
        params = signature_params(READ_COMPONENTS, created=created, keyid=kid,
                                  nonce=secrets.token_urlsafe(16), tag=READ_TAG)
        values = {"@method": method, "@path": path, "@query": "?" + query}
    base = signature_base(values, params)
    inputs.append(f"sig1={params}")
    sigs.append(f"sig1=:{base64.b64encode(key.sign(base.encode())).decode()}:")
    for i, consent_key in enumerate(consents or [], start=2):
        assert body is not None
        ckid = K.signing_key_id(consent_key)
        cparams = signature_params(CONSENT_COMPONENTS, created=created, keyid=ckid,
                                   nonce=secrets.token_urlsafe(16), tag=CONSENT_TAG)
        cbase = signature_base({"content-digest": headers["Content-Digest"]}, cparams)
        inputs.append(f"sig{i}={cparams}")
        sigs.append(f"sig{i}=:{base64.b64encode(consent_key.sign(cbase.encode())).decode()}:")
    headers["Signature-Input"] = ", ".join(inputs)
    headers["Signature"] = ", ".join(sigs)
    return headers
