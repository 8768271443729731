"""Ed25519 keys: text forms, key ids, key files, and the demo keyring.

A public key's text form is `ed25519:` + base64 of its 32 raw bytes; its key id is the first
16 bytes of SHA-256 of those raw bytes, in hex. Private keys are PKCS#8 PEM files created with
mode 0600 and never overwritten; their contents are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import os
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from domain.errors import DomainError

PREFIX = "ed25519:"


def public_text(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode("ascii")


def raw_public(text: str) -> bytes:
    """The 32 raw bytes of a public key's text form; DomainError when it is not one."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise DomainError("invalid_argument", f"a public key looks like '{PREFIX}<base64 of 32 bytes>'",
                          field="public_key")
    try:
        raw = base64.b64decode(text[len(PREFIX):], validate=True)
    except ValueError:
        raise DomainError("invalid_argument", "the public key is not valid base64",
                          field="public_key") from None
    if len(raw) != 32 or public_text_raw(raw) != text:
        raise DomainError("invalid_argument", "an Ed25519 public key has exactly 32 bytes, in "
                          "canonical base64", field="public_key")
    return raw


def public_text_raw(raw: bytes) -> str:
    return PREFIX + base64.b64encode(raw).decode("ascii")


@lru_cache(maxsize=8192)
def load_public(text: str) -> Ed25519PublicKey:
    """The key object of a public key's text form (cached: the same keys sign again and again)."""
    return Ed25519PublicKey.from_public_bytes(raw_public(text))


def key_id(public: str | bytes) -> str:
    raw = raw_public(public) if isinstance(public, str) else public
    return hashlib.sha256(raw).digest()[:16].hex()


@lru_cache(maxsize=256)  # the keys a process signs with are few, and kept by their keyring
def signing_key_id(key: Ed25519PrivateKey) -> str:
    """The key id of a private key's public key (deriving the public key is most of a
    signature's cost in Python, so it is done once per key object)."""
    return key_id(public_text(key))


def verify(public: str | Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    key = load_public(public) if isinstance(public, str) else public
    try:
        key.verify(signature, message)
        return True
    except InvalidSignature:
        return False


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private(path: Path, key: Ed25519PrivateKey) -> None:
    """Create a private key file readable by its owner only; refuse to overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DomainError("already_exists", f"a key file exists at {path}; keys are never "
                          "overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))
    os.chmod(path, 0o600)
    path.with_suffix(".pub").write_text(public_text(key) + "\n", encoding="ascii")


def read_private(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DomainError("unknown_key", f"no private key file at {path}") from None
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise DomainError("invalid_argument", f"{path} does not hold an Ed25519 private key")
    return key


class Keyring:
    """Private keys by participant id, in a folder (or in memory): the client side of signing.

    A real participant keeps its own key; the demo and the tests keep every participant's key
    here so that their commands can be signed (documented as for demos only).
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._keys: dict[str, Ed25519PrivateKey] = {}
        self._pending: dict[str, Ed25519PrivateKey] = {}

    def path(self, participant_id: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{participant_id}.key"

    def has(self, participant_id: str) -> bool:
        return participant_id in self._keys or (
            self.folder is not None and self.path(participant_id).exists())

    def get(self, participant_id: str) -> Ed25519PrivateKey:
        if participant_id not in self._keys:
            if self.folder is None:
                raise DomainError("unknown_key", f"no private key for {participant_id} in this keyring")
            self._keys[participant_id] = read_private(self.path(participant_id))
        return self._keys[participant_id]

    def create(self, participant_id: str) -> Ed25519PrivateKey:
        """A new key for a participant; refuses when the keyring has one already."""
        if self.has(participant_id):
            raise DomainError("already_exists", f"the keyring already holds a key for {participant_id}")
        key = generate()
        if self.folder is not None:
            write_private(self.path(participant_id), key)
        self._keys[participant_id] = key
        return key

    def get_or_create(self, participant_id: str) -> Ed25519PrivateKey:
        return self.get(participant_id) if self.has(participant_id) else self.create(participant_id)

    def prepare_rotation(self, participant_id: str) -> Ed25519PrivateKey:
        """A new key held aside until the registry has recorded the rotation."""
        key = generate()
        self._pending[participant_id] = key
        return key

    def commit_rotation(self, participant_id: str) -> None:
        key = self._pending.pop(participant_id, None)
        if key is not None:
            self.replace(participant_id, key)

    def replace(self, participant_id: str, key: Ed25519PrivateKey) -> None:
        """After a rotation: keep the old file as <id>.key.<n>.old and write the new key."""
        self._keys[participant_id] = key
        if self.folder is not None:
            path = self.path(participant_id)
            if path.exists():
                n = 1
                while path.with_name(f"{path.name}.{n}.old").exists():
                    n += 1
                path.rename(path.with_name(f"{path.name}.{n}.old"))
                pub = path.with_suffix(".pub")
                if pub.exists():
                    pub.unlink()
            write_private(path, key)


def default_keys_dir(db_url: str) -> Path:
    """Keys of a SQLite registry live beside its file: /path/registry.db -> /path/registry.db.keys."""
    from ledger.store import sqlite_path

    path = sqlite_path(db_url)
    if path is not None and path != ":memory:":
        return Path(path + ".keys")
    # Other stores: one folder per host, port, database and schema — never the password or
    # connection options, which may change without the registry changing.
    from urllib.parse import parse_qs, urlparse

    parsed = urlparse(db_url)
    schema = parse_qs(parsed.query).get("schema", ["public"])[-1]
    name = f"{parsed.hostname}_{parsed.port or 5432}_{parsed.path.lstrip('/')}_{schema}"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return Path.home() / ".carbon-ledger" / "keys" / safe
