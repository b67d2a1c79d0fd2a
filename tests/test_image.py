"""Host side of the signed image format: keys, build, parse, verify, inspect."""

import hashlib
import importlib.util
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from meterfw.image import (
    ROLE_UTILITY,
    ROLE_VENDOR,
    SIG_PREFIX,
    signed_message,
    ImageError,
    approve_image,
    platform_api,
    assemble,
    build_image,
    canonical_json,
    inspect,
    pack_payload,
    parse_image,
    sign_manifest,
    verify_image,
    version_tuple,
)
from meterfw.keys import KeysError, init_keys, key_id, load_keys

VECTORS = Path(__file__).parent / "vectors" / "image"
BUILD_TIME = 1767225600


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    init_keys(d)
    return load_keys(d)


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("other-keys")
    init_keys(d)
    return load_keys(d)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    (d / "app.py").write_text("import metering\n\ndef main():\n    return metering.read_wh()\n")
    (d / "metering.py").write_text("def read_wh():\n    return 1234\n")
    (d / "web").mkdir()
    (d / "web" / "x.json").write_bytes(b'{"a": 1}\n')
    # None of these belong in an image.
    (d / "tests").mkdir()
    (d / "tests" / "test_app.py").write_text("def test(): pass\n")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"junk")
    (d / ".hidden.py").write_text("x = 1\n")
    return d


@pytest.fixture(scope="module")
def image(src, keys):
    return build_image(src, "sim", "1.2.3", keys, security_version=4, build_time=BUILD_TIME)


def reassemble(manifest: dict, payload: bytes, keys) -> bytes:
    """An image around an arbitrary manifest/payload, validly signed, to reach the later checks."""
    mb = canonical_json(manifest)
    return assemble(mb, sign_manifest(mb, keys), payload)


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


# --- keys ------------------------------------------------------------------------------------

def test_init_keys_creates_private_files_readable_by_owner_only(tmp_path):
    summary = init_keys(tmp_path / "k")
    k = tmp_path / "k"
    assert sorted(summary["files"]) == sorted(p.name for p in k.iterdir())
    for name in ("vendor.key", "utility.key", "utility.secret"):
        assert stat.S_IMODE((k / name).stat().st_mode) == 0o600
    assert len((k / "vendor.pub").read_bytes()) == 32
    assert len((k / "utility.secret").read_bytes()) == 32
    loaded = load_keys(k)
    assert summary["vendor_key_id"] == key_id(loaded.vendor_public_raw).hex()
    assert summary["utility_key_id"] == key_id(loaded.utility_public_raw).hex()


def test_init_keys_never_overwrites(tmp_path):
    init_keys(tmp_path)
    before = (tmp_path / "vendor.key").read_bytes()
    with pytest.raises(KeysError, match="refusing to overwrite keys"):
        init_keys(tmp_path)
    assert (tmp_path / "vendor.key").read_bytes() == before


def test_key_id_is_sha256_prefix():
    assert key_id(b"\x01" * 32) == hashlib.sha256(b"\x01" * 32).digest()[:8]


def test_load_keys_missing_dir_says_how_to_fix(tmp_path):
    with pytest.raises(KeysError, match=r"no key directory .*meterfw keys init --dir"):
        load_keys(tmp_path / "absent")
    with pytest.raises(KeysError, match=r"no vendor key in .*meterfw keys init --dir"):
        load_keys(tmp_path)


def test_load_keys_vendor_only_leaves_utility_none(tmp_path):
    init_keys(tmp_path)
    for name in ("utility.key", "utility.pub", "utility.secret"):
        (tmp_path / name).unlink()
    k = load_keys(tmp_path)
    assert (k.utility_private, k.utility_public_raw, k.utility_secret) == (None, None, None)


def test_load_keys_public_only_for_verifying(tmp_path):
    init_keys(tmp_path)
    (tmp_path / "vendor.key").unlink()
    with pytest.raises(KeysError, match="no vendor key"):
        load_keys(tmp_path)
    k = load_keys(tmp_path, private=False)
    assert k.vendor_private is None and len(k.vendor_public_raw) == 32


def test_load_keys_rejects_mismatched_or_garbled_files(tmp_path):
    init_keys(tmp_path)
    (tmp_path / "vendor.pub").write_bytes(b"\x00" * 32)
    with pytest.raises(KeysError, match="vendor.pub does not match"):
        load_keys(tmp_path)
    (tmp_path / "vendor.pub").write_bytes(b"short")
    with pytest.raises(KeysError, match="is 5 bytes, expected a raw 32-byte"):
        load_keys(tmp_path)
    (tmp_path / "vendor.key").write_text("not a pem")
    with pytest.raises(KeysError, match="cannot read private key"):
        load_keys(tmp_path)


# --- building --------------------------------------------------------------------------------

def test_build_parse_round_trip(image, src, keys):
    img = parse_image(image)
    assert list(img.files) == ["app.mpy", "metering.mpy", "web/x.json"]  # tests, caches, dotfiles skipped
    assert img.files["web/x.json"] == (src / "web" / "x.json").read_bytes()
    assert all(img.files[n][:2] == b"M\x06" for n in ("app.mpy", "metering.mpy"))
    assert img.manifest == {
        "format": 1,
        "board": "sim",
        "version": "1.2.3",
        "security_version": 4,
        "payload_size": len(img.payload),
        "payload_sha256": hashlib.sha256(img.payload).hexdigest(),
        "min_bootloader": "0.1.0",
        "entry": "app",
        "build_time": BUILD_TIME,
        "mpy": "6.3",
        "kind": "firmware",
        "api": platform_api(),
    }
    assert img.manifest_bytes == canonical_json(img.manifest)
    assert [(r, k) for r, k, _ in img.signatures] == [
        (1, key_id(keys.vendor_public_raw)),
        (2, key_id(keys.utility_public_raw)),
    ]
    assert img.payload_offset == 8 + len(img.manifest_bytes) + 2 * 73
    assert verify_image(img, keys.vendor_public_raw, keys.utility_public_raw, require_approval=True) == []


def test_mpy_does_not_embed_host_paths(image, src):
    assert str(src).encode() not in image


def test_builds_are_byte_identical_across_runs_and_directories(image, src, keys, tmp_path):
    again = build_image(src, "sim", "1.2.3", keys, security_version=4, build_time=BUILD_TIME)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for f in ("app.py", "metering.py"):
        (moved / f).write_bytes((src / f).read_bytes())
    (moved / "web").mkdir()
    (moved / "web" / "x.json").write_bytes((src / "web" / "x.json").read_bytes())
    elsewhere = build_image(moved, "sim", "1.2.3", keys, security_version=4, build_time=BUILD_TIME)
    assert again == image
    assert elsewhere == image


def test_checked_in_vector_rebuilds_byte_identical():
    spec = importlib.util.spec_from_file_location("regen", VECTORS / "regen.py")
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    data = regen.build()
    assert data == (VECTORS / "tiny.mfw").read_bytes()
    assert parse_image(data).manifest_bytes == (VECTORS / "tiny.manifest.json").read_bytes()
    vk = load_keys(VECTORS / "keys")
    assert verify_image(parse_image(data), vk.vendor_public_raw, vk.utility_public_raw, require_approval=True) == []


def test_build_time_comes_from_source_date_epoch_else_newest_mtime(src, keys, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert parse_image(build_image(src, "sim", "1.0.0", keys)).manifest["build_time"] == 1700000000
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    os.utime(src / "metering.py", (1710000000, 1710000000))
    os.utime(src / "app.py", (1600000000, 1600000000))
    os.utime(src / "web" / "x.json", (1600000000, 1600000000))
    os.utime(src / ".hidden.py", (1999999999, 1999999999))  # skipped files don't count
    assert parse_image(build_image(src, "sim", "1.0.0", keys)).manifest["build_time"] == 1710000000


def test_approve_false_or_no_utility_key_gives_vendor_only(src, keys):
    for data in (
        build_image(src, "pico", "1.0.0", keys, build_time=1, approve=False),
        build_image(src, "pico", "1.0.0", replace(keys, utility_private=None), build_time=1),
    ):
        assert [r for r, _, _ in parse_image(data).signatures] == [1]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(version="1.2"), r"bad version '1.2': expected X.Y.Z"),
        (dict(min_bootloader="x"), r"bad min_bootloader 'x'"),
        (dict(board="esp32"), r"unknown board 'esp32': expected one of sim, pico, pico2"),
        (dict(security_version=-1), r"bad security version -1"),
        (dict(security_version=2**32), r"bad security version 4294967296: expected an integer from 0 to 4294967295"),
        (dict(entry="main"), r"entry module main.py not found in"),
        (dict(entry="a-b"), r"bad entry module name 'a-b'"),
        (dict(build_time=-5), r"bad build time -5"),
        (dict(build_time=2**32), r"bad build time 4294967296"),
    ],
)
def test_build_rejects_bad_arguments(src, keys, change, message):
    args = dict(board="sim", version="1.0.0", build_time=1) | change
    board, version = args.pop("board"), args.pop("version")
    with pytest.raises(ImageError, match=message):
        build_image(src, board, version, keys, **args)


def test_build_rejects_missing_source_dir(tmp_path, keys):
    with pytest.raises(ImageError, match="source directory .* does not exist"):
        build_image(tmp_path / "nope", "sim", "1.0.0", keys)


def test_build_reports_syntax_errors_by_file(tmp_path, keys):
    (tmp_path / "app.py").write_text("def broken(:\n")
    with pytest.raises(ImageError, match="mpy-cross failed on app.py"):
        build_image(tmp_path, "sim", "1.0.0", keys, build_time=1)


def test_version_tuple():
    assert version_tuple("1.22.3") == (1, 22, 3)
    assert version_tuple("0.1.10") > version_tuple("0.1.9")
    with pytest.raises(ImageError, match="expected X.Y.Z"):
        version_tuple("1.2.3-rc1")


# --- malformed images ------------------------------------------------------------------------

def test_truncation_at_every_part_is_named(image):
    img = parse_image(image)
    sig_at = 8 + len(img.manifest_bytes)
    cases = {
        0: "truncated image: 0 bytes, the header alone needs 8",
        5: "truncated image: 5 bytes, the header alone needs 8",
        20: f"truncated image: manifest needs {len(img.manifest_bytes)} bytes, only 12 present",
        sig_at + 73: "truncated image: 2 signatures need 146 bytes, only 73 present",
        img.payload_offset + 1: f"truncated image: payload is 1 bytes, manifest says {len(img.payload)}",
        len(image) - 1: f"truncated image: payload is {len(img.payload) - 1} bytes, manifest says {len(img.payload)}",
    }
    for cut, message in cases.items():
        with pytest.raises(ImageError) as e:
            parse_image(image[:cut])
        assert str(e.value) == message


def test_trailing_bytes_are_rejected(image):
    with pytest.raises(ImageError, match="trailing data: payload is .* manifest says"):
        parse_image(image + b"\x00")


def test_bad_magic_and_reserved_byte(image):
    with pytest.raises(ImageError, match=r"not a meterfw image: magic is b'MFW2', expected b'MFW1'"):
        parse_image(b"MFW2" + image[4:])
    with pytest.raises(ImageError, match="reserved byte is 1, expected 0"):
        parse_image(image[:7] + b"\x01" + image[8:])


def test_garbled_manifest_json(image):
    img = parse_image(image)
    garbage = b"{" * len(img.manifest_bytes)
    with pytest.raises(ImageError, match="bad manifest JSON"):
        parse_image(image[:8] + garbage + image[8 + len(garbage) :])


def test_manifest_with_missing_or_mistyped_field(image, keys):
    img = parse_image(image)
    no_board = {k: v for k, v in img.manifest.items() if k != "board"}
    with pytest.raises(ImageError, match="bad manifest: missing field 'board'"):
        parse_image(reassemble(no_board, img.payload, keys))
    with pytest.raises(ImageError, match="bad manifest: security_version is True, expected an integer from 0 to 4294967295"):
        parse_image(reassemble(img.manifest | {"security_version": True}, img.payload, keys))
    # The meter stores it in 32 bits (boot control's floor): no wider value may pass the host.
    with pytest.raises(ImageError, match="bad manifest: security_version is 4294967296, expected"):
        parse_image(reassemble(img.manifest | {"security_version": 2**32}, img.payload, keys))
    with pytest.raises(ImageError, match="bad manifest: format is 2, expected the integer 1"):
        parse_image(reassemble(img.manifest | {"format": 2}, img.payload, keys))


@pytest.mark.parametrize(
    "files_table, message",
    [
        (b"\x01\x00\x03../" + (15).to_bytes(4, "little") + (0).to_bytes(4, "little"), "unsafe name '../'"),
        (b"\x01\x00\x01a" + (11).to_bytes(4, "little") + (99).to_bytes(4, "little"), "a spans 11..110, beyond"),
        (b"\x02\x00\x01a" + bytes(8), "entry 1 of 2 starts past the end"),
        (b"\x02\x00" + b"\x01b" + bytes(8) + b"\x01a" + bytes(8), "entry 1 'a' is out of order or duplicated"),
    ],
)
def test_bad_file_table(image, keys, files_table, message):
    img = parse_image(image)
    manifest = img.manifest | {"payload_size": len(files_table), "payload_sha256": hashlib.sha256(files_table).hexdigest()}
    with pytest.raises(ImageError, match="bad file table: .*" + message):
        parse_image(reassemble(manifest, files_table, keys))


def test_bit_flip_in_manifest_breaks_both_signatures(image, keys):
    img = parse_image(image)
    at = 8 + img.manifest_bytes.index(b'"build_time":') + len(b'"build_time":') + 1  # 2nd digit: still valid JSON
    problems = verify_image(parse_image(flip(image, at)), keys.vendor_public_raw, keys.utility_public_raw)
    assert problems == [
        f"bad vendor signature (key id {key_id(keys.vendor_public_raw).hex()})",
        f"bad utility signature (key id {key_id(keys.utility_public_raw).hex()})",
    ]


def test_bit_flip_in_payload_breaks_the_hash(image, keys):
    problems = verify_image(parse_image(flip(image, len(image) - 1)), keys.vendor_public_raw, keys.utility_public_raw)
    assert len(problems) == 1 and problems[0].startswith("payload hash mismatch: manifest says ")


def test_bit_flip_in_signature_is_bad_signature(image, keys):
    img = parse_image(image)
    problems = verify_image(parse_image(flip(image, img.payload_offset - 1)), keys.vendor_public_raw, keys.utility_public_raw)
    assert problems == [f"bad utility signature (key id {key_id(keys.utility_public_raw).hex()})"]


def test_wrong_key_is_unknown_key_id(image, other_keys, keys):
    problems = verify_image(parse_image(image), other_keys.vendor_public_raw)
    assert problems == [
        f"unknown vendor key id {key_id(keys.vendor_public_raw).hex()} (expected {key_id(other_keys.vendor_public_raw).hex()})"
    ]


def test_signature_by_wrong_key_under_the_right_key_id_is_bad(image, keys, other_keys):
    img = parse_image(image)
    forged = sign_manifest(img.manifest_bytes, other_keys, approve=False)[0][2]
    sigs = [(1, key_id(keys.vendor_public_raw), forged)]
    problems = verify_image(parse_image(assemble(img.manifest_bytes, sigs, img.payload)), keys.vendor_public_raw)
    assert problems == [f"bad vendor signature (key id {key_id(keys.vendor_public_raw).hex()})"]


def test_vendor_signature_cannot_pass_as_approval(image, keys):
    img = parse_image(image)
    vendor = img.signatures[0]
    sigs = [vendor, (2, vendor[1], vendor[2])]
    problems = verify_image(
        parse_image(assemble(img.manifest_bytes, sigs, img.payload)), keys.vendor_public_raw, keys.vendor_public_raw
    )
    assert problems == [f"bad utility signature (key id {vendor[1].hex()})"]


def test_missing_approval_when_required(src, keys):
    img = parse_image(build_image(src, "sim", "1.0.0", keys, build_time=1, approve=False))
    assert verify_image(img, keys.vendor_public_raw, keys.utility_public_raw) == []
    assert verify_image(img, keys.vendor_public_raw, keys.utility_public_raw, require_approval=True) == [
        "missing utility approval"
    ]
    assert verify_image(img, keys.vendor_public_raw, None, require_approval=True) == [
        "approval required but no utility public key to check it against"
    ]


def test_missing_vendor_signature(image, keys):
    img = parse_image(image)
    unsigned = parse_image(assemble(img.manifest_bytes, [], img.payload))
    assert verify_image(unsigned, keys.vendor_public_raw) == ["missing vendor signature"]


def test_approve_adds_approval_once_and_refuses_tampered_images(src, keys):
    vendor_only = build_image(src, "sim", "1.0.0", keys, build_time=1, approve=False)
    approved = approve_image(vendor_only, keys)
    assert approved == build_image(src, "sim", "1.0.0", keys, build_time=1)
    assert approve_image(approved, keys) == approved
    with pytest.raises(ImageError, match="refusing to approve: payload hash mismatch"):
        approve_image(flip(vendor_only, len(vendor_only) - 1), keys)


def test_pack_payload_rejects_overlong_names():
    with pytest.raises(ImageError, match="must be 1..255 bytes"):
        pack_payload({"x" * 256: b""})


# --- inspect ---------------------------------------------------------------------------------

def test_inspect_with_keys_reports_every_signature_and_file(image, keys):
    info = inspect(image, keys)
    json.dumps(info)  # the --json contract: everything serialises
    img = parse_image(image)
    assert info["size"] == len(image)
    assert info["sha256"] == hashlib.sha256(image).hexdigest()
    assert info["manifest"] == img.manifest
    assert info["signatures"] == [
        {"role": "vendor", "key_id": key_id(keys.vendor_public_raw).hex(), "verified": True},
        {"role": "utility", "key_id": key_id(keys.utility_public_raw).hex(), "verified": True},
    ]
    assert info["payload"]["sha256_ok"] is True
    assert info["payload"]["files"] == [{"name": n, "size": len(b)} for n, b in img.files.items()]
    assert info["problems"] == []


def test_inspect_without_keys_leaves_signatures_unchecked(image):
    info = inspect(flip(image, len(image) - 1), None)
    assert [s["verified"] for s in info["signatures"]] == [None, None]
    assert info["payload"]["sha256_ok"] is False
    assert len(info["problems"]) == 1 and info["problems"][0].startswith("payload hash mismatch")


def test_inspect_with_wrong_keys_marks_signatures_unverified(image, other_keys):
    info = inspect(image, other_keys)
    assert [s["verified"] for s in info["signatures"]] == [False, False]
    assert len(info["problems"]) == 2


def test_signature_covers_the_image_id_in_one_sha512_block(image, keys):
    # Ed25519 hashes R || A || message with SHA-512, which a Pico runs in pure Python at ~80 ms
    # a block: the message is the role's prefix and the manifest's SHA-256, and all of it must
    # fit one block (111 bytes leave room for the padding and the length).
    img = parse_image(image)
    image_id = hashlib.sha256(img.manifest_bytes).digest()
    for role in (ROLE_VENDOR, ROLE_UTILITY):
        assert signed_message(role, img.manifest_bytes) == SIG_PREFIX[role] + image_id
        assert 32 + 32 + len(SIG_PREFIX[role]) + 32 <= 111
    # A signature over the manifest's bytes themselves (not its id) is not valid.
    raw = keys.vendor_private.sign(SIG_PREFIX[ROLE_VENDOR] + img.manifest_bytes)
    sigs = [(ROLE_VENDOR, key_id(keys.vendor_public_raw), raw)]
    problems = verify_image(parse_image(assemble(img.manifest_bytes, sigs, img.payload)), keys.vendor_public_raw)
    assert problems == [f"bad vendor signature (key id {key_id(keys.vendor_public_raw).hex()})"]
