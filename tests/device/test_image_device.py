"""bootloader/image.py under the MicroPython unix port, against the same vector the host checks."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from meterfw.image import parse_image

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors" / "image"
TINY = VECTORS / "tiny.mfw"
MANIFEST = (VECTORS / "tiny.manifest.json").read_bytes()
MICROPYTHON = Path(sys.executable).parent / "micropython"
# Far below the Pico's heap: reading, hashing and mounting an image must stay small.
HEAP = "48k"

# Every script imports the module as the device does and prints one JSON line for the host to check.
PRELUDE = """
import sys, json
sys.path.insert(0, sys.argv[1])
from bootloader import image
ARGS = sys.argv[2:]
"""


def run_device(tmp_path, script: str, *args) -> dict:
    path = tmp_path / "script.py"
    path.write_text(PRELUDE + script)
    proc = subprocess.run(
        [str(MICROPYTHON), "-X", f"heapsize={HEAP}", str(path), str(ROOT), *map(str, args)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,  # no stray app.py on ""
    )
    assert proc.returncode == 0, f"micropython failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def _need_micropython():
    if not MICROPYTHON.exists():
        pytest.skip(f"no MicroPython unix port at {MICROPYTHON}: run `make setup`")


def test_device_header_matches_the_vector_manifest_and_key_ids(tmp_path):
    out = run_device(tmp_path, """
import binascii
with open(ARGS[0], "rb") as f:
    manifest, sigs, off = image.read_header(f)
print(json.dumps({"manifest": manifest.decode(), "off": off,
                  "sigs": [[r, binascii.hexlify(k).decode(), len(s)] for r, k, s in sigs]}))
""", TINY)
    assert out["manifest"].encode() == MANIFEST
    ids = [hashlib.sha256((VECTORS / "keys" / f"{r}.pub").read_bytes()).hexdigest()[:16] for r in ("vendor", "utility")]
    assert out["sigs"] == [[1, ids[0], 64], [2, ids[1], 64]]
    assert out["off"] == 8 + len(MANIFEST) + 2 * 73


def test_device_payload_hash_matches_manifest_sync_and_async(tmp_path):
    # A 64-byte buffer forces many chunks and a short final one.
    out = run_device(tmp_path, """
import asyncio, binascii
buf = bytearray(64)
with open(ARGS[0], "rb") as f:
    manifest, sigs, off = image.read_header(f)
    m = json.loads(manifest)
    sync = image.payload_sha256(f, off, m["payload_size"], buf)
    ticks = [0]
    async def ticker():
        while True:
            ticks[0] += 1
            await asyncio.sleep_ms(0)
    async def main():
        t = asyncio.create_task(ticker())
        h = await image.payload_sha256_async(f, off, m["payload_size"], buf)
        t.cancel()
        return h
    asy = asyncio.run(main())
print(json.dumps({"want": m["payload_sha256"], "sync": binascii.hexlify(sync).decode(),
                  "async": binascii.hexlify(asy).decode(), "ticks": ticks[0]}))
""", TINY)
    assert out["sync"] == out["want"] == out["async"]
    assert out["ticks"] > 1  # the metering stand-in ran while the payload was hashed


@pytest.mark.parametrize(
    "cut, message",
    [
        (0, "bad image: truncated header"),
        (7, "bad image: truncated header"),
        (100, "bad image: truncated manifest"),
        (8 + len(MANIFEST) + 100, "bad image: truncated signatures"),
    ],
)
def test_device_rejects_truncated_headers(tmp_path, cut, message):
    bad = tmp_path / "bad.mfw"
    bad.write_bytes(TINY.read_bytes()[:cut])
    out = run_device(tmp_path, """
try:
    with open(ARGS[0], "rb") as f:
        image.read_header(f)
    print(json.dumps({"error": None}))
except ValueError as e:
    print(json.dumps({"error": str(e)}))
""", bad)
    assert out["error"] == message


def test_device_rejects_wrong_magic_and_truncated_payload(tmp_path):
    data = TINY.read_bytes()
    (tmp_path / "magic.mfw").write_bytes(b"MFW0" + data[4:])
    (tmp_path / "short.mfw").write_bytes(data[:-10])
    out = run_device(tmp_path, """
def err(fn):
    try:
        fn()
    except ValueError as e:
        return str(e)
def hash_short():
    with open(ARGS[1], "rb") as f:
        manifest, sigs, off = image.read_header(f)
        image.payload_sha256(f, off, json.loads(manifest)["payload_size"], bytearray(64))
print(json.dumps({"magic": err(lambda: image.read_header(open(ARGS[0], "rb"))),
                  "short": err(hash_short)}))
""", tmp_path / "magic.mfw", tmp_path / "short.mfw")
    assert out == {"magic": "bad image: wrong magic", "short": "bad image: truncated payload"}


def test_device_imports_app_from_mounted_image(tmp_path):
    out = run_device(tmp_path, """
import os, vfs
vfs.mount(image.ImageVfs(ARGS[0]), "/app")
sys.path.insert(0, "/app")
import app, pkg
res = {"answer": app.answer(), "pkg": pkg.NAME,
       "root": sorted(os.listdir("/app")), "pkgdir": sorted(os.listdir("/app/pkg")),
       "config": json.load(open("/app/config.json")),
       "dir_mode": os.stat("/app/pkg")[0], "file_stat": list(os.stat("/app/app.mpy"))}
os.chdir("/app/pkg")
res["cwd"] = os.getcwd()
res["rel_size"] = os.stat("../config.json")[6]
os.chdir("/")
vfs.umount("/app")
print(json.dumps(res))
""", TINY)
    files = {n: len(b) for n, b in parse_image(TINY.read_bytes()).files.items()}  # the host's view
    assert out["answer"] == 42
    assert out["pkg"] == "pkg"
    assert out["root"] == ["app.mpy", "config.json", "pkg"]
    assert out["pkgdir"] == ["__init__.mpy", "calc.mpy"]
    assert out["config"] == {"greeting": "hello"}
    assert out["dir_mode"] == 0x4000
    assert out["file_stat"] == [0x8000, 0, 0, 0, 0, 0, files["app.mpy"], 0, 0, 0]
    assert out["cwd"] == "/app/pkg"
    assert out["rel_size"] == files["config.json"]


def test_device_image_vfs_is_read_only(tmp_path):
    out = run_device(tmp_path, """
import os, vfs
vfs.mount(image.ImageVfs(ARGS[0]), "/app")
def errno(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return e.errno
res = {m: errno(open, "/app/app.mpy", m) for m in ("w", "wb", "a", "r+b")}
res["new"] = errno(open, "/app/new.txt", "w")
res["remove"] = errno(os.remove, "/app/app.mpy")
res["mkdir"] = errno(os.mkdir, "/app/d")
res["missing"] = errno(open, "/app/nope.mpy", "rb")
res["stat_missing"] = errno(os.stat, "/app/nope")
res["intact"] = len(open("/app/app.mpy", "rb").read())
vfs.umount("/app")
print(json.dumps(res))
""", TINY)
    assert out.pop("missing") == 2 and out.pop("stat_missing") == 2
    assert out.pop("intact") > 0
    assert set(out.values()) == {30}, out


def _manifest_variants():
    good = json.loads(MANIFEST)
    out = {"good": MANIFEST}
    for key in good:
        out[f"missing {key}"] = json.dumps({k: v for k, v in good.items() if k != key}).encode()
        for i, bad in enumerate((None, True, -1, 2**32, 1.5, [], {}, "", "x" * 100)):
            out[f"{key}#{i}"] = json.dumps({**good, key: bad}).encode()
    for name, raw in (("list", b"[]"), ("null", b"null"), ("number", b"7"), ("not json", b"{\"a\":"),
                      ("not utf-8", b"\xff\xfe"), ("deep", b"[" * 1000 + b"]" * 1000),
                      ("version 1.2", json.dumps({**good, "version": "1.2"}).encode()),
                      ("version a.b.c", json.dumps({**good, "version": "a.b.c"}).encode()),
                      ("sha upper", json.dumps({**good, "payload_sha256": good["payload_sha256"].upper()}).encode()),
                      ("entry path", json.dumps({**good, "entry": "../app"}).encode())):
        out[name] = raw
    return out


def test_parse_manifest_takes_only_well_formed_manifests(tmp_path):
    # Whatever the bytes (a slot's, or an initiate's from the wire), the device gets a manifest
    # with every field of its kind, or ValueError: never a KeyError or TypeError further on.
    variants = _manifest_variants()
    (tmp_path / "cases.txt").write_text("".join(f"{k}\t{v.hex()}\n" for k, v in variants.items()))
    path = tmp_path / "script.py"
    path.write_text(PRELUDE + """
import binascii, gc
with open(ARGS[0]) as f:
    for line in f:
        name, raw = line.rstrip().split("\\t")
        try:
            m = image.parse_manifest(binascii.unhexlify(raw))
            res = "ok" if isinstance(m, dict) else "not a dict"
        except ValueError:
            res = "refused"
        except Exception as e:
            res = "escaped: %r" % e
        print(name + "\\t" + res)
        m = raw = line = None
        gc.collect()
""")
    # 64k, not HEAP: the script reads its 4 KB "deep" case as one text line, a block that the heap
    # left by compiling image.py from source held or not by chance (a few bytes of code either way).
    proc = subprocess.run([str(MICROPYTHON), "-X", "heapsize=64k", str(path), str(ROOT), str(tmp_path / "cases.txt")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    out = dict(line.split("\t", 1) for line in proc.stdout.splitlines())
    assert out.pop("good") == "ok"
    assert len(out) == len(variants) - 1
    assert {k: v for k, v in out.items() if v != "refused"} == {}
