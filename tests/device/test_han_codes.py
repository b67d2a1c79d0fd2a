"""The HAN's identities on both sides: the install code's CRC-16/X-25 (Zigbee's own example
code), its lengths, and the keys each technology derives from it (zigbee-se's link key; new-tech's
passcode, key and joiner ID) and the frame tags, the same on the meter (firmware/han_table.py,
han_radio.py, han_driver_*.py, under MicroPython) as in the host tools and the rig (meterfw.han)."""
from pathlib import Path

import pytest

from meterfw.han import (HanError, crc16_x25, joiner_id, link_key, new_tech_key, parse_eui64, parse_install_code,
                         passcode, tag, with_crc)

ROOT = Path(__file__).resolve().parents[2]

ZIGBEE_EXAMPLE = "83FED3407A939723A5C639B26916D505C3B5"  # the Zigbee spec's install code, CRC C3B5 low byte first
CODES = [ZIGBEE_EXAMPLE, with_crc(bytes(range(6))).hex(), with_crc(b"\xa5" * 8).hex(), with_crc(bytes(12)).hex()]


def test_install_code_crc_and_lengths():
    assert crc16_x25(b"123456789") == 0x906E  # the CRC's check value
    assert parse_install_code(ZIGBEE_EXAMPLE)[-2:] == b"\xc3\xb5"
    with pytest.raises(HanError, match="fails its CRC"):
        parse_install_code(ZIGBEE_EXAMPLE[:-2] + "B6")
    with pytest.raises(HanError, match="6, 8, 12 or 16 bytes"):
        parse_install_code(with_crc(bytes(10)).hex())
    with pytest.raises(HanError, match="not hex"):
        parse_install_code("zz")
    with pytest.raises(HanError, match="reserved"):
        parse_eui64("FFFFFFFFFFFFFFFF")
    assert parse_eui64("00:12:4b:00:01:a2:b3:c4") == "00124B0001A2B3C4"


def test_the_meter_checks_and_derives_as_the_host_does(run_mpy):
    out = run_mpy("""
sys.path.insert(0, ARGS[0] + "/firmware")
import han_table, han_radio, han_driver_zigbee_se as zigbee, han_driver_new_tech as new_tech
from bootloader.api import CommandError
keys, errors, passcodes, new_keys = [], [], [], []
for code in ARGS[1:]:
    raw = han_table.install_code(code)
    keys.append(zigbee.link_key(raw).hex())
    passcodes.append(new_tech.passcode(raw))
    new_keys.append(new_tech.link_key(raw).hex())
for bad in (ARGS[1][:-2] + "B6", "00" * 12, "xyz"):
    try:
        han_table.install_code(bad)
    except CommandError as e:
        errors.append(e.args[0])
key = zigbee.link_key(han_table.install_code(ARGS[1]))
print(json.dumps({"keys": keys, "errors": errors, "tag": han_radio.tag(key, "data", "7", "1", "ping"),
                  "crc": han_table.crc16_x25(b"123456789"), "passcodes": passcodes, "new_keys": new_keys,
                  "jid": new_tech.joiner_id("00124B0001A2B3C4"), "drivers": han_table.drivers()}))
""", ROOT, *CODES, heap="256k")
    assert out["keys"] == [link_key(parse_install_code(c)).hex() for c in CODES]
    assert out["errors"] == ["han_bad_install_code"] * 3
    assert out["crc"] == 0x906E
    assert out["tag"] == tag(link_key(parse_install_code(CODES[0])), "data", "7", "1", "ping")
    assert out["passcodes"] == [passcode(parse_install_code(c)) for c in CODES]
    assert all(6 <= len(p) <= 32 and not set(p) & set("IOQZ") for p in out["passcodes"])  # Thread's PSKd
    assert out["new_keys"] == [new_tech_key(parse_install_code(c)).hex() for c in CODES]
    assert out["new_keys"] != out["keys"]
    assert out["jid"] == joiner_id("00124B0001A2B3C4") and int(out["jid"][:2], 16) & 0x02
    assert out["drivers"] == ["new-tech", "zigbee-se"]  # found by their modules' names
