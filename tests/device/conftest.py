"""Device unit tests: device modules run under the MicroPython unix port with a small heap."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = Path(sys.executable).parent / "micropython"


# Before every script: the repo on the path, the arguments, frames(decoder, data), every frame a
# Decoder finds in `data` with its payload copied, and encode(type, seq, payload), the bytes
# framing.write sends for a frame.
_PRELUDE = """import sys, json
sys.path.insert(0, sys.argv[1])
ARGS = sys.argv[2:]
def encode(ftype, seq, payload):
    import io
    from bootloader import framing
    out = io.BytesIO()
    framing.write(out, ftype, seq, payload)
    return out.getvalue()
def frames(d, data):
    d.feed(data)
    out = []
    f = d.next()
    while f is not None:
        out.append((f[0], f[1], bytes(f[2])))
        f = d.next()
    return out
"""


@pytest.fixture
def run_mpy(tmp_path):
    """run_mpy(script, *args, heap="64k") runs script with the repo on sys.path and with a
    scratch littlefs-like cwd; the script prints one JSON line, which is returned."""

    def run(script: str, *args, heap: str = "64k") -> dict:
        path = tmp_path / "script.py"
        path.write_text(_PRELUDE + script)
        proc = subprocess.run([str(MICROPYTHON), "-X", f"heapsize={heap}", str(path), str(ROOT), *map(str, args)],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, f"micropython failed:\n{proc.stdout}\n{proc.stderr}"
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run
