"""What `make fuzz` found in the device's parsers, each pinned under the MicroPython unix port."""
from meterfw import framing


def test_a_frame_after_garbage_ending_in_esc_survives_a_read_boundary_between_esc_and_end(run_mpy):
    # Noise that ends in ESC, then a frame: whole, the ESC escapes nothing and the END still ends
    # the noise; split between the two (a UART read boundary), the END was taken as the escaped
    # byte and the frame after it joined the dropped noise.
    good = framing.encode(0x01, 7, b"status")
    out = run_mpy("""
import binascii
from bootloader import framing
good = binascii.unhexlify(ARGS[0])
d = framing.Decoder()
split = frames(d, b"noise\\xdb") + frames(d, good)
whole = frames(framing.Decoder(), b"noise\\xdb" + good)
print(json.dumps({"split": [bytes(p).decode() for _, _, p in split],
                  "whole": [bytes(p).decode() for _, _, p in whole], "bad": d.bad_crc}))
""", good.hex())
    assert out["whole"] == ["status"]
    assert out["split"] == ["status"]
    assert out["bad"] == 1  # the noise, counted once


def test_a_header_claiming_more_manifest_than_the_file_holds_is_refused_before_it_is_read(run_mpy):
    # A 1 KB slot file whose header says 65535 manifest bytes and 255 signatures: refused as
    # truncated (ValueError, what every reader of a slot handles), not a 64 KB read that a
    # 48 KB heap cannot hold (MemoryError, which the boot path's slot readers do not expect).
    out = run_mpy("""
import io
from bootloader import image
found = []
for head in (b"MFW1\\xff\\xff\\x00\\x00", b"MFW1\\x10\\x00\\xff\\x00"):
    try:
        image.read_header(io.BytesIO(head + bytes(1024)))
        found.append("read")
    except ValueError as e:
        found.append(str(e))
    except MemoryError:
        found.append("MemoryError")
print(json.dumps(found))
""", heap="48k")
    assert out == ["bad image: truncated manifest", "bad image: truncated signatures"]
