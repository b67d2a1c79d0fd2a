"""The flow-controlled transfer and the field upgrade flow over the real link: the UART-loss
model at 115200 baud, resume after a dropped link, a killed host tool and a meter power cut,
every refusal, activation options and pricing events, remote access over TCP."""
import hashlib
import json
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil.flashfs import read_file
from meterfw import framing, protocol as P
from meterfw.errors import CommandError, TransportError
from meterfw.image import assemble, canonical_json, pack_payload, parse_image, sign_manifest
from meterfw.keys import load_keys
from meterfw.session import block_reply
from meterfw.upgrade import upgrade

MFW = str(Path(sys.executable).parent / "meterfw")
UART_115200 = {"baud": 115200, "uart_loss": True}
# Padding for the big image (~100 KB with the firmware, ~10 s at 115200 baud): long enough to
# interrupt, and past the meter's first 64 KiB commit of the slot file.
BIG_BYTES = 60_000


def cli(port, keys, *args, timeout=180):
    proc = subprocess.run([MFW, "--port", port, "--keys", str(keys), *args], capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def upgrade_json(port, keys, image, *extra):
    rc, out, err = cli(port, keys, "upgrade", str(image), "--json", *extra)
    assert out, err
    return rc, json.loads(out)


def _variant(base: bytes, keys, path: Path, version="1.1.0", security_version=0, blob=0, approve=True):
    """The base image's compiled files, with a new manifest (and maybe a padding file), signed
    anew: no compiling, so the module's images cost milliseconds."""
    img = parse_image(base)
    files = dict(img.files)
    if blob:  # random, so it neither compresses nor escapes differently from real code
        files["blob.bin"] = random.Random(path.name).randbytes(blob)
    payload = pack_payload(files)
    m = dict(img.manifest, version=version, security_version=security_version, payload_size=len(payload),
             payload_sha256=hashlib.sha256(payload).hexdigest())
    raw = canonical_json(m)
    path.write_bytes(assemble(raw, sign_manifest(raw, keys, approve=approve), payload))
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory, keys_dir, images):
    """Images for this module: a big one, and one per way an image can be refused."""
    tmp = tmp_path_factory.mktemp("transfer_images")
    keys = load_keys(keys_dir)
    base = images["v2"].read_bytes()
    out = {"big": _variant(base, keys, tmp / "big.mfw", blob=BIG_BYTES),
           "unapproved": _variant(base, keys, tmp / "unapproved.mfw", approve=False),
           "secure1": _variant(base, keys, tmp / "secure1.mfw", security_version=1),
           "downgrade": _variant(base, keys, tmp / "downgrade.mfw", version="1.2.0")}
    good = out["secure1"].read_bytes()
    img = parse_image(good)
    sig_at = 8 + len(img.manifest_bytes) + 1 + 8 + 10  # inside the vendor signature
    bt = b'"build_time":'
    flips = {
        "bad_signature": sig_at,
        "payload_bit_flip": img.payload_offset + len(img.payload) // 2,
        # the last digit of build_time, 1 bit: the manifest still parses, its signatures fail
        "manifest_bit_flip": 8 + img.manifest_bytes.index(bt) + len(bt) + len(str(img.manifest["build_time"])) - 1,
    }
    for name, at in flips.items():
        data = bytearray(good)
        data[at] ^= 0x01
        out[name] = tmp / f"{name}.mfw"
        out[name].write_bytes(bytes(data))
    out["truncated"] = tmp / "truncated.mfw"
    out["truncated"].write_bytes(good[: len(good) * 2 // 3])
    return out


def status(board):
    return board.meter().status()


def slot_bytes(board, slot="b"):
    """A slot file as the meter's flash holds it (the board is stopped to read it)."""
    board.needs("files")
    board.sim.stop()
    return read_file(board.sim.dir / "flash.img", f"/slots/{slot}.mfw")


def uart_lost(board) -> int:
    """Bytes the board's UART model has dropped in flash stalls, as the rig counts them."""
    return board.sim.state()["uart_lost"]


def assert_same_meter(before, after, slots=True):
    keys = ["active_version", "active_slot", "confirmed", "security_floor", "rejected", "state_hash"]
    if slots:
        keys.append("slots")
    for k in keys:
        assert after.get(k) == before.get(k), k


def delivered_to_meter(board) -> int:
    return ((board.sim.state().get("line") or {}).get("to_device") or {}).get("delivered", 0)


# --- flow control over the lossy UART -----------------------------------------------------------

def test_uart_loss_model_at_115200_loses_nothing_with_credit_flow_control(make_board, made):
    board = make_board(**UART_115200)
    board.wait_intervals(1)
    rc, report = upgrade_json(board.port, board.keys_dir, made["big"])
    assert rc == 0 and report["result"] == "confirmed", report
    t = report["transfer"]
    assert t["bad_frames"] == 0 and t["no_reply"] == 0 and t["blocks_resent"] == 0, t
    assert uart_lost(board) == 0  # the UART model dropped not one byte
    assert report["resumed_from_block"] == 0 and report["discrepancies"] == []
    assert report["intervals_missed"] == 0 and report["intervals_duplicated"] == 0 and report["energy_conserved"]
    assert slot_bytes(board) == made["big"].read_bytes()


def test_without_flow_control_the_uart_model_drops_bytes_and_frames(make_board, made):
    """The model is live: a host that ignores the window loses a frame to the first flash stall."""
    board = make_board(**UART_115200)
    meter = board.meter()
    data = made["big"].read_bytes()
    r = meter.initiate(data[:parse_image(data).payload_offset])
    bs = r["block_size"]
    seqs = [meter.link.send(P.UPD_BLOCK, meter.seal(P.UPD_BLOCK, struct.pack("<I", n) + data[n * bs:(n + 1) * bs]))
            for n in range(6)]  # three windows' worth, back to back
    got, bad = meter.link.collect(P.UPD_BLOCK, seqs, 5)
    assert bad >= 1 or len(got) < len(seqs)
    assert uart_lost(board) > 0, "the flash stall lost no bytes"
    # Replies say where to go on; the meter kept only what arrived whole, in order.
    state = meter.update_state()
    assert state["next_block"] < 6 and state["window"] >= 1


def test_damaged_frame_gets_bad_frame_and_the_host_resends(board, images, keys_dir):
    meter = board.meter()
    with pytest.raises(CommandError) as e:
        meter.link.request(P.UPD_BLOCK, struct.pack("<I", 0) + b"x" * 64)
    assert e.value.code == "auth_required"  # unauthenticated blocks change nothing
    data = images["v2"].read_bytes()
    r = meter.initiate(data[:parse_image(data).payload_offset])
    bs = r["block_size"]
    frames = []
    for n in range(2):
        meter.link._seq = (meter.link._seq + 1) & 0xFF
        frames.append((meter.link._seq, framing.encode(P.UPD_BLOCK, meter.link._seq, meter.seal(
            P.UPD_BLOCK, struct.pack("<I", n) + data[n * bs:(n + 1) * bs]))))
    damaged = bytearray(frames[0][1])
    damaged[40] ^= 0x10  # a bit flipped on the wire: the CRC no longer matches
    meter.link._write(bytes(damaged) + frames[1][1])
    got, bad = meter.link.collect(P.UPD_BLOCK, [s for s, _ in frames], 3)
    assert bad == 1 and frames[0][0] not in got
    assert block_reply(got[frames[1][0]])["next"] == 0  # the gap is reported, block 1 not taken
    report = upgrade(meter, parse_image(data), when="now")
    assert report["result"] == "confirmed" and report["resumed_from_block"] == 0


# --- resume ---------------------------------------------------------------------------------

def _resume_and_check(board, image, keys):
    rc, report = upgrade_json(board.port, keys, image, "--when", "now")
    assert rc == 0 and report["result"] == "confirmed", report
    # No initiate: it went on from the meter's position. (Should the meter have restarted, the
    # message shows its boots and console: what it had not committed is then rightly gone.)
    assert report["resumed_from_block"] > 0, (board.sim.state().get("boots"), board.sim.console()[-2000:])
    assert slot_bytes(board) == image.read_bytes()
    return report


def test_resume_after_link_drop(make_board, made, keys_dir):
    board = make_board(**UART_115200)
    meter = board.meter()
    data = made["big"].read_bytes()

    def drop_at_40_percent(done, total):
        if done >= total * 0.4:
            meter.link._ser.close()  # the cable is pulled: the port goes away under the tool

    with pytest.raises(TransportError):
        upgrade(meter, parse_image(data), when="now", progress=drop_at_40_percent)
    report = _resume_and_check(board, made["big"], keys_dir)
    assert report["resumed_from_block"] >= 0.4 * report["blocks"] - 2


def test_resume_after_host_tool_killed(make_board, made, keys_dir):
    board = make_board(**UART_115200)
    proc = subprocess.Popen([MFW, "--port", board.port, "--keys", str(keys_dir), "upgrade", str(made["big"]),
                             "--when", "now", "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        board.sim.wait_for(lambda st: delivered_to_meter(board) > 40_000, 60, "40 KB sent")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _resume_and_check(board, made["big"], keys_dir)


def test_resume_after_meter_power_cut(make_board, made, keys_dir):
    board = make_board(**UART_115200)
    proc = subprocess.Popen([MFW, "--port", board.port, "--keys", str(keys_dir), "upgrade", str(made["big"]),
                             "--when", "now", "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Past the first 64 KiB commit: what was written since is lost with the power.
        board.sim.wait_for(lambda st: delivered_to_meter(board) > 75_000, 60, "75 KB sent")
        board.sim.power_cycle()
    finally:
        proc.send_signal(signal.SIGKILL)  # the technician's tool gave up with the meter
        proc.wait()
    st = status(board)
    assert st["boot_reason"] == "power-on" and st["active_version"] == "1.0.0"
    assert st["update"]["first_not_transferred_block"] == 65536 // st["update"]["block_size"]
    _resume_and_check(board, made["big"], keys_dir)


# --- refusals: result rejected, the reason in the report, the meter as it was -----------------

@pytest.mark.parametrize("case, expect, slots_kept", [
    ("bad_signature", "bad vendor signature", True),
    ("manifest_bit_flip", "signature", True),
    ("payload_bit_flip", "payload hash mismatch", False),  # found only once the payload is there
    ("unapproved", "no valid utility approval", True),
    ("truncated", "truncated", True),
    ("other_board", "image is for board pico", True),
])
def test_refusal_is_rejected_and_leaves_the_meter_as_it_was(make_board, made, images, tmp_path, case, expect,
                                                            slots_kept):
    board = make_board(require_approval=True)
    before = status(board)
    image = images["pico"] if case == "other_board" else made[case]
    report_file = tmp_path / "report.json"
    rc, out, err = cli(board.port, board.keys_dir, "upgrade", str(image), "--when", "now",
                       "--report", str(report_file))
    report = json.loads(report_file.read_text())
    assert rc == 4 and report["result"] == "rejected", (rc, report, err)
    assert expect in report["reason"] and err == f"meterfw: rejected: {report['reason']}\n"
    after = status(board)
    assert_same_meter(before, after, slots=slots_kept)
    assert after["boot_reason"] == before["boot_reason"] and after["uptime_s"] >= before["uptime_s"]


def test_downgrade_below_the_security_floor_is_rejected(board, made, keys_dir):
    rc, report = upgrade_json(board.port, keys_dir, made["secure1"], "--when", "now")
    assert rc == 0 and status(board)["security_floor"] == 1
    before = status(board)
    rc, report = upgrade_json(board.port, keys_dir, made["downgrade"], "--when", "now")
    assert rc == 4 and report["result"] == "rejected" and "below the meter's floor 1" in report["reason"]
    assert_same_meter(before, status(board))


# --- activation --------------------------------------------------------------------------------

def test_activation_now_refused_inside_a_pricing_event(board, images, keys_dir):
    meter = board.meter()
    now = status(board)["time_s"]
    meter.set_state({"pricing_events": [{"start_s": now - 5, "end_s": now + 600, "tier": 2}]})
    before = status(board)
    rc, report = upgrade_json(board.port, keys_dir, images["v2"], "--when", "now")
    assert rc == 4 and report["result"] == "rejected" and "pricing event" in report["reason"], report
    after = status(board)
    assert_same_meter(before, after, slots=False)  # verified and waiting in slot b, not active
    assert after["update"]["status"] == P.VERIFIED


def test_boundary_activation_defers_past_a_pricing_event(board, images, keys_dir):
    meter = board.meter()
    board.wait_intervals(1)
    st = status(board)
    nxt = st["time_s"] - st["time_s"] % st["interval_s"] + st["interval_s"]
    event = {"start_s": nxt + 1, "end_s": nxt + 2 * st["interval_s"], "tier": 3}
    meter.set_state({"pricing_events": [event]})
    rc, report = upgrade_json(board.port, keys_dir, images["v2"], "--registers", "preserve", "--ack", "next-read")
    assert rc == 0 and report["result"] == "confirmed", report
    at = report["activate_at_s"]
    assert at >= event["end_s"] and at % st["interval_s"] == 0 and report["activation_deferred_s"] > 0
    assert report["intervals_missed"] == 0 and report["intervals_duplicated"] == 0 and report["energy_conserved"]
    assert report["discrepancies"] == []
    names = [e["name"] for e in meter.read_events()]
    assert "activation deferred for a pricing event" in names and "upgrade available" in names
    upd = status(board)["update"]
    assert (upd["registers"], upd["ack"]) == ("preserve", "next-read")


def test_activation_at_a_given_time(board, images, keys_dir):
    t = status(board)["time_s"] + 8
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    rc, report = upgrade_json(board.port, keys_dir, images["v2"], "--when", "at", iso)
    assert rc == 0 and report["result"] == "confirmed", report
    assert report["activate_at_s"] == t
    evs = board.meter().read_events()
    activated = [e for e in evs if e["name"] == "firmware activated"]
    assert activated and activated[-1]["time"] >= t


# --- remote access ------------------------------------------------------------------------------

def test_remote_upgrade_over_socket(make_board, images, keys_dir):
    board = make_board(tcp_port=0)
    url = f"socket://127.0.0.1:{board.sim.state()['tcp_port']}"
    rc, out, err = cli(url, keys_dir, "status", "--json")
    assert rc == 0 and json.loads(out)["active_version"] == "1.0.0", err
    rc, report = upgrade_json(url, keys_dir, images["v2"], "--when", "now")
    assert rc == 0 and report["result"] == "confirmed" and report["discrepancies"] == [], report
    rc, out, err = cli(url, keys_dir, "log", "--json")
    assert rc == 0 and "image confirmed" in [e["name"] for e in json.loads(out)]
    assert board.sim.state()["tcp_client"] is None  # each command's connection has closed
    rc, out, err = cli(board.port, keys_dir, "status", "--json")  # the local port works again
    assert rc == 0 and json.loads(out)["active_version"] == "1.1.0"
