"""Signed ledgers: each record's hash signed with its actor's Ed25519 key.

The hash chain shows that records were changed, removed or reordered after the fact; a
signature also shows *who* wrote each record, so that a party holding Redis cannot forge
a whole new chain. The committing process signs ``record_hash`` (the signature is not part
of the hash, so chains verify the same with or without signatures); verifiers hold only
public keys.

Keys are PEM files, configured per actor id, ``*`` for any other actor (and records with no
actor)::

    ABSTRACTRUNTIME_SIGNING_KEYS="alice=/keys/alice.pem,*=/keys/workers.pem"      # writers
    ABSTRACTRUNTIME_VERIFY_KEYS="alice=/keys/alice.pub.pem,*=/keys/workers.pub.pem"  # readers

Needs the ``cryptography`` package (``pip install 'abstractruntime-celery[signing]'``).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runtime.errors import AbstractRuntimeError

__all__ = ["SigningError", "LedgerSigner", "LedgerVerifier", "parse_key_spec", "signer_from_env",
           "verifier_from_env", "SIGNING_KEYS_ENV", "VERIFY_KEYS_ENV"]

SIGNING_KEYS_ENV = "ABSTRACTRUNTIME_SIGNING_KEYS"
VERIFY_KEYS_ENV = "ABSTRACTRUNTIME_VERIFY_KEYS"
_ANY = "*"


class SigningError(AbstractRuntimeError, ValueError):
    """A key that cannot be read or used; names the actor and the file, never the key."""


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SigningError("signed ledgers need the cryptography package: "
                           "pip install 'abstractruntime-celery[signing]'") from None
    return serialization, ed25519


def parse_key_spec(spec: str, variable: str) -> dict[str, Path]:
    """``"alice=/k/a.pem,*=/k/all.pem"`` -> ``{"alice": Path, "*": Path}``; ValueError naming the variable."""
    out: dict[str, Path] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        actor, sep, path = part.partition("=")
        if not sep or not actor.strip() or not path.strip():
            raise SigningError(f"{variable}: expected actor=path.pem, got {part!r}")
        out[actor.strip()] = Path(path.strip())
    return out


def _load(path: Path, actor: str, *, private: bool) -> Any:
    serialization, ed25519 = _crypto()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read the key of actor {actor!r} at {path}: {exc.strerror}") from None
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError):
        raise SigningError(f"{path} (actor {actor!r}) is not a PEM {'private' if private else 'public'} key") \
            from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise SigningError(f"{path} (actor {actor!r}) is not an Ed25519 key")
    return key


class LedgerSigner:
    """Signs record hashes with the key of each record's actor (or the ``*`` key)."""

    def __init__(self, keys: Mapping[str, Any]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_files(cls, paths: Mapping[str, Path]) -> LedgerSigner:
        return cls({actor: _load(path, actor, private=True) for actor, path in paths.items()})

    def sign(self, actor_id: str | None, record_hash: str) -> str | None:
        """The base64 signature of ``record_hash``, or None when no key covers the actor."""
        key = self._keys.get(actor_id or _ANY) or self._keys.get(_ANY)
        if key is None:
            return None
        return base64.b64encode(key.sign(record_hash.encode("ascii"))).decode("ascii")


class LedgerVerifier:
    """Checks the signature of every record whose actor (or ``*``) has a public key."""

    def __init__(self, keys: Mapping[str, Any]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_files(cls, paths: Mapping[str, Path]) -> LedgerVerifier:
        return cls({actor: _load(path, actor, private=False) for actor, path in paths.items()})

    def verify(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """``{ok, checked, first_bad_index, errors: [{index, type: missing_signature|bad_signature, actor_id}]}``."""
        from cryptography.exceptions import InvalidSignature

        errors = []
        checked = 0
        for i, rec in enumerate(records):
            actor = rec.get("actor_id")
            key = self._keys.get(actor or _ANY) or self._keys.get(_ANY)
            if key is None:
                continue
            checked += 1
            signature, record_hash = rec.get("signature"), rec.get("record_hash")
            if not signature or not record_hash:
                errors.append({"index": i, "type": "missing_signature", "actor_id": actor})
                continue
            try:
                key.verify(base64.b64decode(signature), str(record_hash).encode("ascii"))
            except (InvalidSignature, ValueError):
                errors.append({"index": i, "type": "bad_signature", "actor_id": actor})
        return {"ok": not errors, "checked": checked, "errors": errors,
                "first_bad_index": errors[0]["index"] if errors else None}


def signer_from_env(environ: Mapping[str, str] | None = None) -> LedgerSigner | None:
    env = os.environ if environ is None else environ
    spec = env.get(SIGNING_KEYS_ENV, "").strip()
    return LedgerSigner.from_files(parse_key_spec(spec, SIGNING_KEYS_ENV)) if spec else None


def verifier_from_env(environ: Mapping[str, str] | None = None) -> LedgerVerifier | None:
    env = os.environ if environ is None else environ
    spec = env.get(VERIFY_KEYS_ENV, "").strip()
    return LedgerVerifier.from_files(parse_key_spec(spec, VERIFY_KEYS_ENV)) if spec else None
