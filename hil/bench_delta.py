"""`make bench`'s delta figures: bytes on the wire and time to confirmed, full image against delta,
for a one-module fix, a change touching a quarter of the modules and one touching every module,
each an upgrade of a fresh meter at 115200 baud (900 s intervals, activation now), and the peak
live heap while the meter makes a delta's blocks, against the board's heap. Spans are board time
(hil/bench.py's Rig), bytes are what the host wrote to the line for the transfer (initiate and
blocks: the host's Link counts them)."""
from __future__ import annotations

from pathlib import Path

from hil.bench import BAUD, LINK_TIMEOUT_S, WORK, CountingLink, Rig, _start
from hil.pytest_plugin import build_changed
from meterfw.delta import WIRE_EXTRA, build, full_wire_bytes, recipes
from meterfw.errors import MeterfwError
from meterfw.image import Image, build_image
from meterfw.keys import load_keys
from meterfw.paths import FIRMWARE
from meterfw.session import Meter
from meterfw.upgrade import upgrade

# (name, modules changed: None is every one)
CHANGES = (("one-module fix", 1), ("a quarter of the modules", 8), ("every module", None))


def whole_modules_bytes(base: Image, new: Image) -> int:
    """What the delta's blocks would cost on the wire with every changed module sent whole
    (deflated), without the ranges it shares with its old version: the binary diff's worth."""
    hidden = bytearray(base.data)
    for name, data in base.files.items():
        if new.files.get(name) != data:
            at = base.payload_offset + base.payload.index(data)
            hidden[at:at + len(data)] = bytes(len(data))
    return sum(len(r) + WIRE_EXTRA for r in recipes(bytes(hidden), new.data))


def measure(kind: str, keys_dir: Path, say) -> dict:
    out = WORK / kind / "delta"
    out.mkdir(parents=True)
    keys = load_keys(keys_dir)
    secret = load_keys(keys_dir, private=False).utility_secret
    v1 = out / "v1.mfw"
    v1.write_bytes(build_image(FIRMWARE, kind, "1.0.0", keys, build_time=1))
    base = Image.read(v1)
    r = {"baud": BAUD, "changes": []}
    for name, count in CHANGES:
        new = Image.read(build_changed(out, kind, keys_dir, "1.1.0", count))
        d = build(base, new)
        row = {"name": name, "image_bytes": len(new.data), "delta_predicted": d.wire_bytes(),
               "full_predicted": full_wire_bytes(new), "whole_modules_predicted": whole_modules_bytes(base, new)}
        for how in ("full", "delta"):
            say(f"{kind}: {name}, {how}")
            board = _start(kind, f"delta-{count or 'all'}-{how}", v1, keys_dir, 900)
            rig = Rig(kind, board)
            try:
                meter = Meter(CountingLink(board.port, timeout_s=LINK_TIMEOUT_S[kind]), secret)
                if meter.wait_until(lambda s: s.get("health") is not None, 600) is None:
                    raise MeterfwError(f"{kind}: the meter ran no health check within 600 s")
                heap = {}

                def stage(step):  # the transfer is over and nothing else has run: its heap
                    if step == "verify":
                        heap.update(meter.status()["heap"])

                mark = rig.mark()
                report = upgrade(meter, new, deltas=[d], delta="only" if how == "delta" else "never",
                                 when="now", poll_s=0.5, stage=stage)
                if report["result"] != "confirmed" or report["method"] != how:
                    raise MeterfwError(f"{kind}: {name} by {how}: {report['result']} ({report['reason']})")
                row[f"{how}_wire"] = report["bytes_on_wire"]
                row[f"{how}_s"] = round(rig.since(mark), 2)
                row[f"{how}_heap_peak_live"] = heap["peak_live"] - (heap.get("board_models", 0) if kind == "sim" else 0)
                meter.link.close()
            finally:
                board.stop()
        r["changes"].append(row)
    return r


def figures(runs: dict, heap_of: dict) -> list[tuple]:
    """Rows for hil/bench.py's table: (name, {board: value}, unit, target)."""
    def col(fn):
        return {k: (fn(r, k) if r is not None else None) for k, r in runs.items()}

    rows = []
    for i, (name, _) in enumerate(CHANGES):
        def ch(r, i=i):
            return r["changes"][i]

        target = "<= 0.10" if i == 0 else "<= 1"
        rows += [
            (f"delta, {name}: bytes on the wire, full image", col(lambda r, k: ch(r)["full_wire"]), "bytes", "report"),
            ("  bytes on the wire, delta", col(lambda r, k: ch(r)["delta_wire"]), "bytes", "report"),
            ("  delta / full", col(lambda r, k: round(ch(r)["delta_wire"] / ch(r)["full_wire"], 3)), "ratio", target),
            ("  blocks' bytes, delta as built (the wire's, less the initiate)", col(lambda r, k: ch(r)["delta_predicted"]),
             "bytes", "report"),
            ("  the same with changed modules sent whole (no binary diff)",
             col(lambda r, k: ch(r)["whole_modules_predicted"]), "bytes", "report"),
            ("  time to confirmed, full image", col(lambda r, k: ch(r)["full_s"]), "s", "report"),
            ("  time to confirmed, delta", col(lambda r, k: ch(r)["delta_s"]), "s", "report"),
            ("  application's peak live heap from boot through the transfer, full image",
             col(lambda r, k: ch(r)["full_heap_peak_live"]), "bytes", "report"),
            ("  the same, delta (the meter makes each block)", col(lambda r, k: ch(r)["delta_heap_peak_live"]),
             "bytes", "report"),
            ("  delta's share of the board's heap",
             col(lambda r, k: round(ch(r)["delta_heap_peak_live"] / heap_of[k], 3)), "ratio", "<= 0.60"),
        ]
    return rows

