"""The platform's footprint, for `make bench`: the bootloader's lines of code, the part of it that is
never updated in the field, and the heap it holds while the application meters, now and at the
commit before the platform became a versioned, self-updating one (issue #14), measured the same way.

Resident heap: the bootloader's modules compiled as provisioning compiles them (compile_module),
imported by the MicroPython unix port with the Pico's heap, counting what stays allocated after a
collection. What stays loaded while the application meters is what the boot keeps (bootloader.boot
and its imports, and the image format and slot checks its selection loads) and what the
application imports of the platform: before, the link server and the protocol tables directly;
now, bootloader.api alone, with the first stage's record and its definitions (/main.py runs for
as long as the meter does).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from meterfw.image import compile_module

BASELINE = "7b691b3"  # main before issue #14
REPO = Path(__file__).resolve().parents[1]
HEAP = json.loads((REPO / "boards" / "pico" / "board.json").read_text())["heap_bytes"]
_MEASURE = """
import gc, sys
sys.path[:] = [{tree!r}, ".frozen"]
import asyncio, json, struct, hashlib, binascii, io, os, vfs, micropython
gc.collect()
before = gc.mem_alloc()
stage = {{}}
{stage}
for name in {modules!r}:
    __import__(name)
gc.collect()
print(gc.mem_alloc() - before)
"""


def _lines(sources: dict[str, str]) -> tuple[int, int]:
    """(lines, code lines: neither blank nor only a comment)."""
    total = code = 0
    for text in sources.values():
        for line in text.splitlines():
            total += 1
            stripped = line.strip()
            code += bool(stripped) and not stripped.startswith("#")
    return total, code


def _sources(commit: str | None) -> dict[str, str] | None:
    """bootloader/*.py at `commit` (None: the work tree); None when the commit is not at hand."""
    if commit is None:
        return {p.name: p.read_text() for p in sorted((REPO / "bootloader").glob("*.py"))}
    ls = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", commit, "bootloader/"],
                        capture_output=True, text=True)
    if ls.returncode:
        return None
    return {Path(p).name: subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{p}"], capture_output=True,
                                         text=True, check=True).stdout
            for p in ls.stdout.split() if p.endswith(".py")}


def _resident(sources: dict[str, str], modules: tuple, first_stage: str | None) -> int:
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="meterfw-footprint-") as tmp:
        pkg = Path(tmp) / "bootloader"
        pkg.mkdir()
        for name, text in sources.items():
            if name == "main.py":
                continue
            src = Path(tmp) / name
            src.write_text(text)
            mpy = f"bootloader/{name[:-3]}.mpy"
            (pkg / (name[:-3] + ".mpy")).write_bytes(compile_module(src, mpy, Path(tmp)))
        stage = ""
        if first_stage is not None:  # its definitions, without the board it starts or the call
            body = re.sub(r"^from board\.hal import Board\n", "", first_stage, flags=re.M)
            body = re.sub(r"^main\(\)\n", "", body, flags=re.M)
            stage = f"exec({body!r}, stage)"
        script = Path(tmp) / "measure.py"
        script.write_text(_MEASURE.format(tree=tmp, modules=modules, stage=stage))
        out = subprocess.run([str(bin_dir / "micropython"), "-X", f"heapsize={HEAP}", str(script)],
                             capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])


def measure() -> dict:
    """{"before": {...} or None, "now": {...}}: lines, code lines, never-updated lines, resident bytes."""
    out = {}
    for key, commit, modules, staged in (("before", BASELINE, ("bootloader.boot", "bootloader.link"), False),
                                         ("now", None, ("bootloader.boot", "bootloader.api", "bootloader.image",
                                                        "bootloader.slots"), True)):
        sources = _sources(commit)
        if sources is None:
            out[key] = None
            continue
        lines, code = _lines(sources)
        # Before, all of it stayed as flashed; now the first stage (/main.py) alone does.
        fixed = _lines({"main.py": sources["main.py"]}) if staged else (lines, code)
        out[key] = {"lines": lines, "code_lines": code, "never_updated_lines": fixed[0],
                    "never_updated_code_lines": fixed[1],
                    "resident_bytes": _resident(sources, modules, sources["main.py"] if staged else None)}
    return out


def table(fp: dict) -> str:
    rows = (("bootloader: lines (code lines)", lambda d: f"{d['lines']} ({d['code_lines']})"),
            ("  never updated in the field", lambda d: f"{d['never_updated_lines']} ({d['never_updated_code_lines']})"),
            ("bootloader's resident heap while metering", lambda d: f"{d['resident_bytes']} bytes"))
    head = f"{'platform footprint':45} {'before (' + BASELINE + ')':>20} {'now':>16}"
    return "\n".join([head] + [f"{name:45} {fn(fp['before']) if fp['before'] else '-':>20} {fn(fp['now']):>16}"
                               for name, fn in rows])


if __name__ == "__main__":
    print(table(measure()))
