"""Host <-> simulated meter over the real pyserial link: the walking skeleton's main job."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hil.metrology import true_energy_mwh
from meterfw.image import parse_image
from meterfw.upgrade import continuity

MFW = str(Path(sys.executable).parent / "meterfw")


def cli(port, *args, keys=None):
    extra = ["--keys", str(keys)] if keys else []
    proc = subprocess.run([MFW, "--port", port, *extra, *args], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def cli_json(port, *args):
    rc, out, err = cli(port, *args, "--json")
    assert rc == 0, err
    return json.loads(out)


def assert_continuous_and_true(records, seed):
    assert continuity(records) == {"intervals_missed": 0, "intervals_duplicated": 0}
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for prev, rec in zip(records, records[1:]):
        assert rec["register_mwh"] - prev["register_mwh"] == rec["energy_mwh"]
    for r in records:
        if "partial" not in r["flags"]:
            assert r["energy_mwh"] == true_energy_mwh(seed, r["start"], r["start"] + r["duration_s"]), r


def test_upgrade_live_keeps_every_interval(board, images, keys_dir, tmp_path):
    port = board.port
    board.wait_intervals(2)
    page = tmp_path / "upgrade.html"
    rc, out, err = cli(port, "upgrade", str(images["v2"]), "--json", "--report", str(page), keys=keys_dir)
    assert rc == 0, err
    report = json.loads(out)
    assert 'class="plot"' in page.read_text() and "switch" in page.read_text()  # the page plots the intervals
    assert report["result"] == "confirmed"
    assert (report["from_version"], report["to_version"]) == ("1.0.0", "1.1.0")
    assert report["intervals_missed"] == 0 and report["energy_conserved"]
    st = cli_json(port, "status")
    assert st["active_version"] == "1.1.0" and st["confirmed"] and st["active_slot"] == "b"
    assert st["slots"] == {"a": {"version": "1.0.0"}, "b": {"version": "1.1.0"}}
    assert st["boot_reason"] == "activate"
    board.wait_intervals(len(cli_json(port, "read", "intervals")) + 1)
    records = cli_json(port, "read", "intervals")
    assert_continuous_and_true(records, board.seed)
    assert any("firmware-change" in r["flags"] for r in records)


def test_revert_goes_back_with_continuity(board, images, keys_dir):
    port = board.port
    assert cli(port, "upgrade", str(images["v2"]), "--when", "now", keys=keys_dir)[0] == 0
    rc, out, err = cli(port, "revert", "--json", keys=keys_dir)
    assert rc == 0, err
    r = json.loads(out)
    assert (r["result"], r["from_version"], r["to_version"], r["discrepancies"]) == ("reverted", "1.1.0", "1.0.0", [])
    st = cli_json(port, "status")
    assert st["active_version"] == "1.0.0" and st["confirmed"] and st["boot_reason"] == "revert"
    board.wait_intervals(len(cli_json(port, "read", "intervals")) + 1)
    assert_continuous_and_true(cli_json(port, "read", "intervals"), board.seed)


def _unchanged(port, before):
    after = cli_json(port, "status")
    for key in ("active_version", "active_slot", "slots", "confirmed", "update"):
        assert after[key] == before[key], key


@pytest.mark.parametrize("case", ["missing_file", "other_board", "truncated", "garbage"])
def test_bad_image_input_changes_nothing(board, images, keys_dir, tmp_path, case):
    port = board.port
    before = cli_json(port, "status")
    data = images["v2"].read_bytes()
    path = tmp_path / "bad.mfw"
    expect = {
        "missing_file": "no such file",
        "other_board": f"image is for board {parse_image(images['other'].read_bytes()).manifest['board']}",
        "truncated": "truncated",
        "garbage": "not a meterfw image",
    }[case]
    if case == "other_board":
        path = images["other"]
    elif case == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif case == "garbage":
        path.write_bytes(b"\x00not an image" * 50)
    report = tmp_path / "report.json"
    rc, out, err = cli(port, "upgrade", str(path), "--report", str(report), keys=keys_dir)
    assert err.startswith("meterfw: ") and err.count("\n") == 1 and expect in err, err
    if case == "missing_file":
        assert rc == 1 and not report.exists()  # nothing to judge: an error, not a verdict
    else:
        # The image itself is refused before any of it reaches the meter: a verdict, exit 4.
        assert rc == 4 and err.startswith("meterfw: rejected: "), err
        r = json.loads(report.read_text())
        assert r["result"] == "rejected" and expect in r["reason"]
    _unchanged(port, before)


def test_port_that_does_not_exist(images):
    rc, out, err = cli("/dev/does-not-exist", "upgrade", str(images["v2"]))
    assert rc == 1 and err == "meterfw: cannot open port /dev/does-not-exist: no such device\n"


def test_privileged_commands_need_the_meters_key(board, images, tmp_path):
    from meterfw.keys import init_keys

    port = board.port
    before = cli_json(port, "status")
    rc, _, err = cli(port, "revert")
    assert rc == 1 and "privileged command: give --keys" in err
    init_keys(tmp_path / "other")
    rc, _, err = cli(port, "upgrade", str(images["v2"]), keys=tmp_path / "other")
    assert rc == 1 and err == "meterfw: meter refused: authentication failed: wrong key or damaged request\n"
    _unchanged(port, before)


def test_unauthenticated_and_replayed_frames_are_refused(board, images):
    """Below the CLI: a forged trailer, and a genuine request played again."""
    import json as _json
    from meterfw import protocol as P
    from meterfw.auth import AuthSession, meter_key
    from meterfw.errors import CommandError
    from meterfw.keys import load_keys
    from meterfw.transport import Link

    with Link(board.port) as link:
        with pytest.raises(CommandError) as e:
            link.request_json(P.REVERT)
        assert e.value.code == "auth_required"
        st = link.request_json(P.STATUS)
        nonce = bytes.fromhex(link.request_json(P.AUTH_CHALLENGE)["nonce"])
        secret = load_keys(Path(board.keys_dir), private=False).utility_secret
        auth = AuthSession(meter_key(secret, st["serial"]), nonce)
        sealed = auth.seal(P.UPD_ACTIVATE, _json.dumps({"when": "now"}).encode())
        opener = auth.opener(P.UPD_ACTIVATE, sealed)
        with pytest.raises(CommandError) as e:
            link.request_json(P.UPD_ACTIVATE, raw=sealed, opener=opener)
        assert e.value.code == "not_verified"  # authenticated, refused on its merits (sealed)
        with pytest.raises(CommandError) as e:
            link.request_json(P.UPD_ACTIVATE, raw=sealed, opener=opener)
        assert e.value.code == "replay"  # refused by the session check: unsealed, let through
