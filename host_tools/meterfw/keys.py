"""Signing keys: the vendor key, the utility approval key and the utility root secret.

A key directory holds:
  vendor.key, utility.key   Ed25519 private keys, PEM PKCS8, mode 0600
  vendor.pub, utility.pub   raw 32-byte public keys (what devices store in /keys/)
  utility.secret            32 random bytes, mode 0600: root of the per-meter HMAC keys
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

VENDOR_KEY = "vendor.key"
VENDOR_PUB = "vendor.pub"
UTILITY_KEY = "utility.key"
UTILITY_PUB = "utility.pub"
UTILITY_SECRET = "utility.secret"
KEY_FILES = (VENDOR_KEY, VENDOR_PUB, UTILITY_KEY, UTILITY_PUB, UTILITY_SECRET)

SECRET_LEN = 32
PUB_LEN = 32


class KeysError(Exception):
    """A key directory is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class Keys:
    vendor_private: Ed25519PrivateKey | None  # None only with load_keys(private=False)
    utility_private: Ed25519PrivateKey | None
    vendor_public_raw: bytes
    utility_public_raw: bytes | None
    utility_secret: bytes | None


def key_id(pub_raw: bytes) -> bytes:
    """8-byte id carried next to each signature, so a device can pick the right public key."""
    return hashlib.sha256(pub_raw).digest()[:8]


def public_raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: even if another process races us, an existing key is never overwritten.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, mode)  # the umask may have narrowed or widened the requested mode


ROLES = ("both", "vendor", "utility")


def init_keys(dir: Path, role: str = "both", vendor_pub: Path | None = None) -> dict:
    """Create a fresh key directory; returns a JSON-ready summary for `meterfw keys init --json`.
    role "both" makes one directory for a lab; "vendor" and "utility" make the two that separate
    organisations keep (BR3). A utility's directory holds the vendor's public key it trusts
    (vendor_pub), which checks the vendor's signature before an approval and on the meters."""
    dir = Path(dir)
    if role not in ROLES:
        raise KeysError(f"no key role {role!r}; roles are {', '.join(ROLES)}")
    if role == "utility" and vendor_pub is None:
        raise KeysError("a utility key directory needs the vendor's public key it trusts: give --vendor-pub FILE")
    pub = None
    if vendor_pub is not None:
        try:
            pub = Path(vendor_pub).read_bytes()
        except OSError as e:
            raise KeysError(f"cannot read {vendor_pub}: {e.strerror or e}") from None
        if len(pub) != PUB_LEN:
            raise KeysError(f"{vendor_pub} is {len(pub)} bytes, expected a raw {PUB_LEN}-byte Ed25519 public key")
    try:
        existing = [name for name in KEY_FILES if (dir / name).exists()]
        if existing:
            raise KeysError(f"refusing to overwrite keys in {dir}: {', '.join(existing)} already exist")
        dir.mkdir(parents=True, exist_ok=True)
        return _init(dir, role, pub)
    except OSError as e:  # a file where the directory should be, no permission, a full disk
        raise KeysError(f"cannot make keys in {dir}: {e.strerror or e}") from None


def _init(dir: Path, role: str, vendor_pub: bytes | None) -> dict:
    summary = {"dir": str(dir), "role": role}
    files = []
    if role == "utility":
        _write_new(dir / VENDOR_PUB, vendor_pub, 0o644)
        summary["vendor_key_id"] = key_id(vendor_pub).hex()
        files.append(VENDOR_PUB)
    for role_ in ("vendor", "utility") if role == "both" else (role,):
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        pub = public_raw(private)
        _write_new(dir / f"{role_}.key", pem, 0o600)
        _write_new(dir / f"{role_}.pub", pub, 0o644)
        summary[f"{role_}_key_id"] = key_id(pub).hex()
        files += [f"{role_}.key", f"{role_}.pub"]
    if role != "vendor":  # the meters' HMAC keys are the utility's
        _write_new(dir / UTILITY_SECRET, os.urandom(SECRET_LEN), 0o600)
        files.append(UTILITY_SECRET)
    summary["files"] = sorted(files, key=KEY_FILES.index)
    return summary


def _read_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeysError(f"cannot read private key {path}: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeysError(f"{path} is not an Ed25519 private key")
    return key


def _read_public(dir: Path, role: str, private: Ed25519PrivateKey | None) -> bytes | None:
    path = dir / f"{role}.pub"
    if not path.exists():
        return public_raw(private) if private else None
    pub = path.read_bytes()
    if len(pub) != PUB_LEN:
        raise KeysError(f"{path} is {len(pub)} bytes, expected a raw {PUB_LEN}-byte Ed25519 public key")
    # A mismatched pair would sign images that no device accepts; catch it before signing.
    if private and public_raw(private) != pub:
        raise KeysError(f"{path} does not match {dir / (role + '.key')}")
    return pub


def load_keys(dir: Path, *, private: bool = True) -> Keys:
    """Load a key directory. private=False is enough for verify/inspect (public keys only)."""
    dir = Path(dir)
    try:
        return _load(dir, private)
    except OSError as e:  # no permission, a directory where a key file should be
        raise KeysError(f"cannot read {e.filename or dir}: {e.strerror or e}") from None


def _load(dir: Path, private: bool) -> Keys:
    hint = f"run `meterfw keys init --dir {dir}`"
    if not dir.is_dir():
        raise KeysError(f"no key directory {dir}: {hint}")

    vendor_priv = _read_private(dir / VENDOR_KEY) if (dir / VENDOR_KEY).exists() else None
    if private and vendor_priv is None:
        raise KeysError(f"no vendor key in {dir}: {hint}")
    vendor_pub = _read_public(dir, "vendor", vendor_priv)
    if vendor_pub is None:
        raise KeysError(f"no vendor key in {dir}: {hint}")

    utility_priv = _read_private(dir / UTILITY_KEY) if (dir / UTILITY_KEY).exists() else None
    utility_pub = _read_public(dir, "utility", utility_priv)

    secret = None
    if (dir / UTILITY_SECRET).exists():
        secret = (dir / UTILITY_SECRET).read_bytes()
        if len(secret) != SECRET_LEN:
            raise KeysError(f"{dir / UTILITY_SECRET} is {len(secret)} bytes, expected {SECRET_LEN}")

    return Keys(vendor_priv, utility_priv, vendor_pub, utility_pub, secret)
