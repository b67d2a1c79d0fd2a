"""A sample of `make fuzz` (hil/fuzz.py): every target, 2,000 inputs each, with no escape, no wrong
result, no hang and a flat heap; and the harness itself shown to catch each kind of finding."""
import struct
import sys
from pathlib import Path

import pytest

from hil import fuzz
from meterfw.image import ImageError, parse_image

SAMPLE = 2000
MICROPYTHON = Path(sys.executable).parent / "micropython"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    if not MICROPYTHON.exists():
        pytest.skip(f"no MicroPython unix port at {MICROPYTHON}: run `make setup`")
    out = tmp_path_factory.mktemp("fuzz")
    return out, fuzz.build_lib(out), fuzz.build_base_image(out)


@pytest.mark.parametrize("target", fuzz.TARGETS)
def test_fuzz_sample_finds_nothing(work, target):
    out, lib, image = work
    res = fuzz.run_target(target, SAMPLE, 1, out, lib, image)
    assert res["findings"] == []
    assert res["inputs"] == SAMPLE and res["restarts"] == 0
    assert res["heap_flat"], (res["heap_start"], res["heap_end"])


# A target with a defect of every kind the harness counts, run the way a device target runs.
_BROKEN = """
import sys
sys.path[:] = [sys.argv[1], ".frozen"]
import gc, time
from hil.fuzz_gen import run_cases

class Broken:
    calls = 0
    kept = []

    def make(self, r):
        return bytes(r.bytes(8))

    def run(self, r, data):
        Broken.calls += 1
        Broken.kept.append(bytearray(256))  # a leak
        if Broken.calls == 20:
            time.sleep_ms(1200)  # slow: over the 1 s an input may take
        if Broken.calls == 50:
            while True:  # a true hang: the driver kills the worker and resumes after this case
                pass
        if data[0] % 7 == 0:
            raise KeyError(data[0])  # an escape

def heap():
    gc.collect()
    return gc.mem_alloc()

run_cases(Broken(), "broken", int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5]), sys.argv[4],
          time.ticks_ms, time.ticks_diff, heap, lambda e: type(e).__name__)
"""


def test_the_harness_catches_escapes_slow_inputs_hangs_and_a_leak(work, tmp_path):
    _, lib, image = work
    script = tmp_path / "broken.py"
    script.write_text(_BROKEN)

    def cmd(name, n, seed, start, out, lib, image):
        return [str(MICROPYTHON), "-X", "heapsize=200k", str(script), str(lib), str(n), str(seed), str(out), str(start)]

    res = fuzz.run_target("broken", 80, 3, tmp_path, lib, image, stall_s=3, cmd=cmd)
    kinds = [(f["kind"], f["what"]) for f in res["findings"]]
    assert res["inputs"] == 80 and res["restarts"] == 1  # every case ran: the hung one, and on after it
    assert ("hang", "no progress for 3 s") in kinds
    assert any(k == "hang" and w.endswith(" ms") for k, w in kinds)
    assert res["escapes"] > 0 and ("escape", "KeyError") in kinds
    assert not res["heap_flat"] and res["heap_end"] - res["heap_start"] > fuzz.DEVICE_HEAP_SLACK
    assert fuzz.failed(res)
    # A reproducer is the input itself: it escapes again.
    saved = [Path(f["reproducer"]) for f in res["findings"] if f["kind"] == "escape" and f["reproducer"]]
    assert saved and all(p.read_bytes()[0] % 7 == 0 for p in saved)
    hung = next(f for f in res["findings"] if f["what"].startswith("no progress"))
    assert hung["case"] == 49 and Path(hung["reproducer"]).stat().st_size == 8


def test_a_manifest_nested_past_the_recursion_limit_is_an_image_error():
    # Found by host_image: json.loads raised RecursionError (not ImageError) on a manifest that
    # nests deeper than the interpreter's recursion limit, and `meterfw image inspect` crashed.
    manifest = b"[" * 5000 + b"]" * 5000
    data = b"MFW1" + struct.pack("<HBB", len(manifest), 0, 0) + manifest
    with pytest.raises(ImageError, match="bad manifest JSON"):
        parse_image(data)
