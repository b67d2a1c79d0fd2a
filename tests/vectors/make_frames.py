"""Regenerates frames.json from the host encoder. The device must decode and encode the same bytes."""
import json
from pathlib import Path

from meterfw import framing

CASES = [
    (0x01, 0, b""),
    (0x81, 7, b'{"ok":true}'),
    (0x11, 255, bytes(range(256))),          # every byte value, END and ESC included
    (0x11, 1, b"\xc0\xdb\xc0\xdb\xdb\xdc\xdd"),  # escapes next to each other
    (0xFF, 3, b'{"code":"bad_request","message":"x"}'),
]

if __name__ == "__main__":
    out = [{"type": t, "seq": s, "payload": p.hex(), "wire": framing.encode(t, s, p).hex()} for t, s, p in CASES]
    (Path(__file__).parent / "frames.json").write_text(json.dumps(out, indent=1) + "\n")
