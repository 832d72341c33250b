"""Signed ledgers: each record's hash signed with its actor's Ed25519 key.

The hash chain shows that records were changed, removed or reordered after the fact; a
signature also shows *who* wrote each record, so that a party holding Redis cannot forge
a whole new chain. The committing process signs ``record_hash`` (the signature is not part
of the hash, so chains verify the same with or without signatures); verifiers hold only
public keys.

Keys are PEM files, configured per actor id, ``*`` for any other actor (and records with no
actor), in :class:`SigningSettings` (``WorkerSettings.signing``) or the environment::

    ABSTRACTRUNTIME_SIGNING_KEYS="alice=/keys/alice.pem,*=/keys/workers.pem"      # writers
    ABSTRACTRUNTIME_VERIFY_KEYS="alice=/keys/alice.pub.pem,*=/keys/workers.pub.pem"  # readers

A key file is read when the signer or verifier is made (``settings.signer()``), not when
the settings are: a command that signs nothing never needs the keys.

Needs the ``cryptography`` package (``pip install 'abstractruntime-celery[signing]'``).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import StoreError

from ._settings import settings_from_env

__all__ = ["SigningError", "SigningSettings", "LedgerSigner", "LedgerVerifier", "parse_key_spec", "signer_from_env",
           "verifier_from_env", "SIGNING_KEYS_ENV", "VERIFY_KEYS_ENV", "ENV_VARS"]

#: The variable naming the private keys records are signed with (writers: workers, producers).
SIGNING_KEYS_ENV = "ABSTRACTRUNTIME_SIGNING_KEYS"
#: The variable naming the public keys ``abstractruntime verify`` checks signatures against.
VERIFY_KEYS_ENV = "ABSTRACTRUNTIME_VERIFY_KEYS"
#: Environment variable -> settings field, as read by :meth:`SigningSettings.from_env`.
ENV_VARS = {SIGNING_KEYS_ENV: "signing_keys", VERIFY_KEYS_ENV: "verify_keys"}
_ANY = "*"


class SigningError(StoreError, ValueError):
    """Raised when a key cannot be read or used; names the actor and the file, never the key."""


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


@dataclass(frozen=True)
class SigningSettings:
    """Which keys sign and verify ledger records: ``actor=/path.pem`` pairs, comma-separated."""

    #: Private keys records are signed with, per actor (``*``: any other); "" signs nothing.
    signing_keys: str = ""
    #: Public keys signatures are checked against (``abstractruntime verify``); "" checks none.
    verify_keys: str = ""

    def __post_init__(self) -> None:
        for name in ("signing_keys", "verify_keys"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"SigningSettings.{name} must be a string of actor=path.pem pairs, "
                                 f"got {getattr(self, name)!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SigningSettings:
        """Settings from ``ABSTRACTRUNTIME_SIGNING_KEYS`` / ``_VERIFY_KEYS`` (default ``os.environ``)."""
        return settings_from_env(cls, ENV_VARS, os.environ if environ is None else environ)

    def signer(self) -> LedgerSigner | None:
        """A signer loading the private keys now; None when none are configured.

        Raises :class:`SigningError` naming the variable, the actor or the file.
        """
        spec = self.signing_keys.strip()
        return LedgerSigner.from_files(parse_key_spec(spec, SIGNING_KEYS_ENV)) if spec else None

    def verifier(self) -> LedgerVerifier | None:
        """A verifier loading the public keys now; None when none are configured."""
        spec = self.verify_keys.strip()
        return LedgerVerifier.from_files(parse_key_spec(spec, VERIFY_KEYS_ENV)) if spec else None


def signer_from_env(environ: Mapping[str, str] | None = None) -> LedgerSigner | None:
    """``SigningSettings.from_env(environ).signer()``: the signer the environment configures, or None."""
    return SigningSettings.from_env(environ).signer()


def verifier_from_env(environ: Mapping[str, str] | None = None) -> LedgerVerifier | None:
    """``SigningSettings.from_env(environ).verifier()``: the verifier the environment configures, or None."""
    return SigningSettings.from_env(environ).verifier()
