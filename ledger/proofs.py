"""Proof bundles that a bank, a buyer or a court checks offline, trusting only the operator's key.

A bundle holds a checkpoint signed by the operator (with any witness cosignatures), and the
state-commitment leaves that matter, each with its RFC 9162 inclusion proof against the
checkpoint's state root: for a pledge, the pledge and every ticket it holds units of; for a
retirement, the retirement and its tickets; and the participants who signed or cosigned. The
verifier recomputes every hash, then reads the proven leaves: is the pledge active, held by that
bank, over those serials, and how much of it is impaired — as of that checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from domain.errors import DomainError
from domain.values import format_serial
from ledger import keys as K
from ledger import merkle
from ledger.checkpoints import (
    Checkpoint,
    b64,
    checkpoint_json,
    previous_json,
    unb64,
    verify_checkpoint,
    verify_cosignature,
)
from ledger.commitments import leaf_bytes

if TYPE_CHECKING:
    from ledger.application import Registry

BUNDLE_FORMAT = "carbon-ledger-proof/1"
# A retirement as a person reads it, beside the bundle that proves every word of it.
CERTIFICATE_FORMAT = "carbon-ledger-certificate/1"
_CERTIFICATE_FIELDS = ("format", "retirement", "proof")


def bundle(app: Registry, kind: str, ident: str) -> dict[str, Any]:
    """A proof bundle for a pledge or a retirement as of a signed checkpoint (signing one if due)."""
    if kind not in ("pledge", "retirement"):
        raise DomainError("invalid_argument", f"proofs are for a pledge or a retirement, not {kind!r}")
    projection = app.projection()
    checkpointer = app.operator_checkpointer()
    latest = app.recorder.latest_checkpoint()
    if checkpointer is not None and (latest is None or latest[0] != projection.position):
        checkpointer.make()
        latest = app.recorder.latest_checkpoint()
    if latest is None:
        raise DomainError("unknown_checkpoint", "no checkpoint has been signed yet; ask the operator "
                          "to run `carbon-ledger checkpoint`")
    if latest[0] != projection.position:
        projection = app.projection(as_of=latest[0])
    cp_json = checkpoint_json(app, latest[0])
    commitment = projection.commitment
    if b64(commitment.root()) != cp_json["state_root"]:
        raise DomainError("log_inconsistent", "the replayed state does not match the checkpoint's commitment")
    key = f"{kind}/{ident}"
    value = commitment.value(key)
    if value is None:
        code = "unknown_pledge" if kind == "pledge" else "unknown_retirement"
        raise DomainError(code, f"no {kind} {ident} exists as of checkpoint {latest[0]}")
    if kind == "pledge":
        tickets = sorted(value["held"])
        parties = [value["pledgee"], value["pledgor"]]
    else:
        tickets = sorted({line[0] for line in value["lines"]})
        parties = [value["holder"]] + ([value["court"]] if value["court"] else [])
    parties += [c["witness"] for c in cp_json["cosignatures"]]
    keys = [key] + [f"ticket/{t}" for t in tickets] + [f"participant/{p}" for p in dict.fromkeys(parties)]
    leaves = commitment.prove(keys)
    for leaf in leaves:
        leaf["proof"] = [b64(h) for h in leaf["proof"]]
    return {"format": BUNDLE_FORMAT, "kind": kind, "id": ident, "checkpoint": cp_json,
            "leaves": leaves}


def certificate(app: Registry, retirement_id: str) -> dict[str, Any]:
    """A retirement certificate: the retirement as the registry's reads show it, and its proof."""
    view = app.view(lambda p: p.retirement(retirement_id))
    return {"format": CERTIFICATE_FORMAT, "retirement": view,
            "proof": bundle(app, "retirement", retirement_id)}


class ProofError(Exception):
    pass


def verify_bundle(data: dict[str, Any], operator_key: str) -> dict[str, Any]:
    """Check a bundle, or a retirement certificate, offline; return what it proves, or raise
    ProofError naming what is wrong."""
    try:
        if isinstance(data, dict) and data.get("format") == CERTIFICATE_FORMAT:
            return _verify_certificate(data, operator_key)
        return _verify(data, operator_key)
    except ProofError:
        raise
    except DomainError as e:
        raise ProofError(e.message) from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ProofError(f"the bundle is malformed ({type(e).__name__}: {e})") from None


def _verify(data: dict[str, Any], operator_key: str) -> dict[str, Any]:
    if data.get("format") != BUNDLE_FORMAT:
        raise ProofError(f"not a proof bundle (format {data.get('format')!r})")
    K.raw_public(operator_key)
    cpj = data["checkpoint"]
    body = cpj["body"].encode("utf-8")
    cp = verify_checkpoint(body, unb64(cpj["signature"]), operator_key)
    claimed = (cpj["origin"], cpj["size"], cpj["root"], cpj["chain"], cpj["state_root"], cpj["time"])
    actual = (cp.origin, cp.size, b64(cp.root), b64(cp.chain), b64(cp.state_root), cp.time)
    # (the name of the checkpoint before: there exactly when the body carries it, as a body
    # signed before the chain does not)
    if cp.previous is not None:
        claimed += (cpj.get("previous", "absent"),)
        actual += (previous_json(cp.previous),)
    elif "previous" in cpj:
        claimed += (cpj["previous"],)
    if claimed != actual:
        raise ProofError("the checkpoint's fields differ from its signed body")
    leaves: dict[str, dict[str, Any]] = {}
    for leaf in data["leaves"]:
        if not isinstance(leaf["key"], str) or not isinstance(leaf["value"], dict):
            raise ProofError("a leaf is malformed")
        h = merkle.leaf_hash(leaf_bytes(leaf["key"], leaf["value"]))
        proof = [unb64(p) for p in leaf["proof"]]
        if not merkle.verify_inclusion(h, leaf["index"], leaf["size"], proof, cp.state_root):
            raise ProofError(f"the leaf {leaf['key']} is not in the checkpoint's state commitment")
        if leaf["key"] in leaves:
            raise ProofError(f"the leaf {leaf['key']} appears twice")
        leaves[leaf["key"]] = leaf["value"]
    sizes = {leaf["size"] for leaf in data["leaves"]}
    if len(sizes) != 1:
        raise ProofError("the leaves claim different state tree sizes")
    witnesses = _cosignatures(cpj, body, leaves)
    kind, ident = data["kind"], data["id"]
    if kind == "pledge":
        facts = _pledge_facts(ident, leaves)
    elif kind == "retirement":
        facts = _retirement_facts(ident, leaves)
    else:
        raise ProofError(f"unknown bundle kind {kind!r}")
    return {"ok": True, "kind": kind, "id": ident, "origin": cp.origin, "checkpoint_size": cp.size,
            "checkpoint_time": cp.time, "cosigned_by": witnesses, **facts}


def _verify_certificate(data: dict[str, Any], operator_key: str) -> dict[str, Any]:
    """The proof verifies, and the retirement the certificate states is word for word the one
    it proves: nothing a person reads on it goes unproven."""
    unproven = sorted(set(data) - set(_CERTIFICATE_FIELDS))
    if unproven:
        raise ProofError(f"the certificate has fields no proof covers: {', '.join(unproven)}")
    stated, proof = data["retirement"], data["proof"]
    if not isinstance(stated, dict) or not isinstance(proof, dict):
        raise ProofError("the certificate's retirement and proof must be objects")
    facts = _verify(proof, operator_key)
    if facts["kind"] != "retirement":
        raise ProofError(f"the certificate's proof is a {facts['kind']} bundle, not a retirement's")
    if stated.get("retirement_id") != facts["id"]:
        raise ProofError(f"the certificate's retirement_id {stated.get('retirement_id')!r}: its "
                         f"proof proves retirement {facts['id']}, not {stated.get('retirement_id')}")
    leaf = next(leaf["value"] for leaf in proof["leaves"]
                if leaf["key"] == f"retirement/{facts['id']}")
    proven = retirement_view(leaf)
    for name in sorted(set(stated) | set(proven)):
        if name not in proven:
            raise ProofError(f"the certificate's {name} is not in its proof")
        if name not in stated:
            raise ProofError(f"the certificate lacks {name}, which its proof shows as {proven[name]!r}")
        if stated[name] != proven[name]:
            raise ProofError(f"the certificate says {name} is {stated[name]!r}; its proof shows "
                             f"{proven[name]!r}")
    return {**facts, "certificate": True}


def retirement_view(value: dict[str, Any]) -> dict[str, Any]:
    """A proven retirement leaf in the shape of the registry's retirement read (the projection's
    `retirement`; a test holds the two to one answer)."""
    out = {"retirement_id": value["retirement_id"], "holder": value["holder"],
           "purpose": value["purpose"], "beneficiary": value["beneficiary"],
           "details": value["details"], "quantity_t": value["quantity_t"],
           "lines": [{"ticket_no": t, "standard": s, "quantity_t": sum(b - a + 1 for a, b in rs),
                      "serials": [{"first_serial": format_serial(t, a),
                                   "last_serial": format_serial(t, b)} for a, b in rs]}
                     for t, s, rs in value["lines"]]}
    if value["case_no"]:
        out.update(case_no=value["case_no"], court=value["court"])
    if value["scheme"]:  # a compliance retirement: the entity is the holder that retired
        out.update(entity=value["holder"], scheme=value["scheme"], period=value["period"])
    return out


def _cosignatures(cpj: dict[str, Any], body: bytes, leaves: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    cosignatures = cpj["cosignatures"]
    if not isinstance(cosignatures, list):
        raise ProofError("the checkpoint's cosignatures are malformed")
    for c in cosignatures:
        participant = leaves.get(f"participant/{c['witness']}")
        if participant is None:
            raise ProofError(f"the cosignature by {c['witness']} comes without the witness's key")
        key = participant["keys"].get(c["key_id"])
        if key is None or participant["role"] != "regulator":
            raise ProofError(f"{c['witness']} is not a regulator with key {c['key_id']}")
        if not verify_cosignature(key["public_key"], unb64(c["signature"]), body):
            raise ProofError(f"the cosignature by {c['witness']} does not verify")
        out.append(c["witness"])
    return out


def _ticket(leaves: dict[str, dict[str, Any]], ticket_no: str) -> dict[str, Any]:
    ticket = leaves.get(f"ticket/{ticket_no}")
    if ticket is None:
        raise ProofError(f"the bundle lacks ticket {ticket_no}")
    expected = 1
    for first, last, *_ in ticket["blocks"]:
        if first != expected or last < first:
            raise ProofError(f"ticket {ticket_no}'s blocks do not partition its serials")
        expected = last + 1
    if expected != ticket["issued_t"] + 1:
        raise ProofError(f"ticket {ticket_no}'s blocks do not add up to its issued quantity")
    return ticket


def _covered(ticket: dict[str, Any], ranges: list[list[int]], holder: str, state: str, ref: str) -> int:
    n = 0
    for a, b in ranges:
        for first, last, h, s, r in ticket["blocks"]:
            lo, hi = max(a, first), min(b, last)
            if lo <= hi:
                if (h, s, r) != (holder, state, ref):
                    raise ProofError(f"serials {format_serial(ticket['ticket_no'], lo)}.."
                                     f"{format_serial(ticket['ticket_no'], hi)} are {s} "
                                     f"({r or 'no ref'}) of {h}, not {state} under {ref}")
                n += hi - lo + 1
    return n


def _pledge_facts(ident: str, leaves: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pledge = leaves.get(f"pledge/{ident}")
    if pledge is None:
        raise ProofError(f"the bundle does not prove pledge {ident}")
    units = []
    total = 0
    for ticket_no, ranges in sorted(pledge["held"].items()):
        ticket = _ticket(leaves, ticket_no)
        n = _covered(ticket, ranges, pledge["pledgor"], "pledged", ident)
        total += n
        units += [{"ticket_no": ticket_no, "first_serial": format_serial(ticket_no, a),
                   "last_serial": format_serial(ticket_no, b), "quantity_t": b - a + 1}
                  for a, b in ranges]
    if total != pledge["pledged_t"]:
        raise ProofError(f"the pledge says {pledge['pledged_t']} t but its tickets show {total} t")
    return {"pledgee": pledge["pledgee"], "pledgor": pledge["pledgor"], "status": pledge["status"],
            "active": pledge["status"] == "active", "pledged_t": total,
            "impaired_t": pledge["impaired_t"], "released_t": pledge["released_t"],
            "enforced_t": pledge["enforced_t"], "loan_ref": pledge["loan_ref"], "units": units}


def _retirement_facts(ident: str, leaves: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ret = leaves.get(f"retirement/{ident}")
    if ret is None:
        raise ProofError(f"the bundle does not prove retirement {ident}")
    units = []
    total = 0
    for ticket_no, standard, ranges in ret["lines"]:
        ticket = _ticket(leaves, ticket_no)
        if ticket["standard"] != standard:
            raise ProofError(f"ticket {ticket_no} is {ticket['standard']}, not {standard}")
        total += _covered(ticket, ranges, ret["holder"], "retired", ident)
        units += [{"ticket_no": ticket_no, "standard": standard,
                   "first_serial": format_serial(ticket_no, a),
                   "last_serial": format_serial(ticket_no, b), "quantity_t": b - a + 1}
                  for a, b in ranges]
    if total != ret["quantity_t"]:
        raise ProofError(f"the retirement says {ret['quantity_t']} t but its tickets show {total} t")
    out = {"holder": ret["holder"], "purpose": ret["purpose"], "beneficiary": ret["beneficiary"],
           "details": ret["details"], "quantity_t": total, "units": units}
    for k in ("case_no", "court", "scheme", "period"):
        if ret.get(k):
            out[k] = ret[k]
    return out


def checkpoint_of(data: dict[str, Any]) -> Checkpoint:
    return Checkpoint.parse(data["checkpoint"]["body"].encode("utf-8"))
