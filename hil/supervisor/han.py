"""The simulated home area network: an IEEE 802.15.4 medium and the devices on it, played by the
supervisor, not by the meter's MicroPython process. Two technologies share the air, each with its
own dialect: zigbee-se (Zigbee Smart Energy joining) and new-tech (a Thread-like commissioning,
firmware/han_driver_new_tech.py); a device answers its own technology's frames and ignores the
other's. A plc device is on the premises' wiring, not the air: the radio never hears it. The meter's HAN radio (its network
co-processor, as an NCP sits behind a UART on a real meter) reaches the medium over a pipe pair:
the device's fds 5 (its radio's transmit) and 6 (receive), one text frame a line.

DIR/han.json holds the devices (`meterfw-sim han add|remove|list` edit it, under DIR/han.lock)
and what the medium knows of each: joined or not, its short address, counters. The medium reads
it again on `han-reload` (the CLI sends it to a running supervisor) and writes each change back.

Frames, meter to medium (the radio's own):
    ping T                      the radio answers `pong T` (a dead radio, sim.json han=fail, does not)
zigbee-se, meter to medium:
    permit S                    permit joining for S seconds (broadcast)
    key EUI SHORT NONCE TAG     transport key: a device checks TAG with its own link key
    deny EUI                    association refused (the meter holds no key for it)
    data SHORT SEQ BODY TAG     an application frame; BODY is ping or selftest
    leave EUI SHORT TAG         leave the network
medium to meter:
    pong T
    assoc EUI KIND              an unjoined device asks to join while joining is permitted
    confirm EUI SHORT TAG       the device took the key (tagged with it)
    data SHORT SEQ BODY TAG     its answer: pong, or selftest:ok / selftest:fail:REASON
new-tech, meter to medium:
    steer JID S                 commissioning steered to joiner ID JID for S seconds (0: ended)
    chal JID RLOC N TAG         the meter's proof over the joiner's nonce and its own N, and the RLOC16
    coap RLOC MID BODY TAG      an application frame; BODY is ping or selftest
    release JID RLOC TAG        leave the network
medium to meter:
    hello JID KIND N            a steered joiner starts, with its nonce
    proof JID RLOC TAG          the joiner's proof (it checked the meter's first)
    ack RLOC MID BODY TAG       its answer, as zigbee-se's
Tags are meterfw.han.tag(the device's key, words...), zigbee-se's device frames marked "up";
each technology derives its key from the install code its own way (meterfw.han.DEVICE_KEYS).
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from meterfw.han import DEVICE_KEYS, KINDS, TECHS, HanError, joiner_id, parse_eui64, parse_install_code, tag

from .common import SimError, _read_json, _resolve_dir, _write_json_atomic, is_running

HAN_JSON = "han.json"
HAN_LOCK = "han.lock"
BEHAVIOURS = ("normal", "silent", "flaky", "failing-self-test")
_SELF_TEST_FAULT = {"thermostat": "temperature-sensor-open", "display": "backlight-failed",
                    "load-control": "relay-coil-open", "ev-charger": "ground-fault-monitor"}


@contextmanager
def _locked(sim_dir: Path):
    fd = os.open(sim_dir / HAN_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield _read_json(sim_dir / HAN_JSON) or {"devices": {}}
    finally:
        os.close(fd)


def _save(sim_dir: Path, data: dict) -> None:
    _write_json_atomic(sim_dir / HAN_JSON, data)


# -- the rig's side: `meterfw-sim han add|remove|list` ----------------------------------------
def add_device(sim_dir, eui64: str, install_code: str, kind: str, tech: str, behaviour: str = "normal") -> dict:
    d = _resolve_dir(sim_dir)
    if not d.is_dir():
        raise SimError(f"{sim_dir} is not a sim meter's directory")
    try:
        eui, code = parse_eui64(eui64), parse_install_code(install_code)
    except HanError as e:
        raise SimError(str(e), 2) from None
    if kind not in KINDS or tech not in TECHS or behaviour not in BEHAVIOURS:
        raise SimError(f"kind, tech and behaviour must be one of {KINDS}, {TECHS}, {BEHAVIOURS}", 2)
    with _locked(d) as data:
        if eui in data["devices"]:  # an EUI-64 is one device's, world-wide (NFR3)
            raise SimError(f"a device with EUI-64 {eui} is already on this HAN")
        dev = {"install_code": code.hex().upper(), "kind": kind, "tech": tech, "behaviour": behaviour,
               "state": "unjoined", "short": None, "associations": 0, "refused": 0, "key_failures": 0,
               "frames_in": 0, "frames_out": 0, "leaves": 0, "added_s": int(time.time())}
        data["devices"][eui] = dev
        _save(d, data)
    _reload(d)
    return {"eui64": eui, **dev}


def remove_device(sim_dir, eui64: str) -> bool:
    d = _resolve_dir(sim_dir)
    try:
        eui = parse_eui64(eui64)
    except HanError as e:
        raise SimError(str(e), 2) from None
    with _locked(d) as data:
        gone = data["devices"].pop(eui, None) is not None
        _save(d, data)
    _reload(d)
    return gone


def list_devices(sim_dir) -> dict:
    d = _resolve_dir(sim_dir)
    with _locked(d) as data:
        return data["devices"]


def _reload(d: Path) -> None:
    if is_running(d):
        from .control import command

        command(d, "han-reload")


# -- the supervisor's side: the medium and its devices ----------------------------------------
class HanMedium:
    """The devices on the premises and the air between them and the meter's radio."""

    def __init__(self, sim_dir: Path, answers: bool, log):
        self.dir = sim_dir
        self.answers = answers  # False: the meter's radio is fitted but dead (sim.json han=fail)
        self.log = log
        self.devices: dict[str, dict] = {}
        self.keys: dict[str, bytes] = {}
        self.permit_until = 0.0
        self.steering: dict[str, float] = {}  # new-tech: joiner ID -> steered until
        self.hellos: dict[str, str] = {}  # new-tech: EUI-64 -> the nonce of its hello
        self.send = lambda line: None  # to the meter's radio; set at each boot
        self.reload()

    def reload(self) -> None:
        with _locked(self.dir) as data:
            self.devices = data["devices"]
        self.keys = {eui: DEVICE_KEYS[d["tech"]](bytes.fromhex(d["install_code"])) for eui, d in self.devices.items()}
        self.jids = {joiner_id(eui): eui for eui, d in self.devices.items() if d["tech"] == "new-tech"}
        # A device switched on while joining is permitted (steered to it) asks at once.
        if time.monotonic() < self.permit_until:
            self._associate()
        for jid, until in list(self.steering.items()):
            if time.monotonic() < until:
                self._joiner_starts(jid)

    def _store(self) -> None:
        """The medium's knowledge of each device, written back (the CLI may have added some)."""
        with _locked(self.dir) as data:
            for eui, dev in data["devices"].items():
                if eui in self.devices:
                    dev.update({k: v for k, v in self.devices[eui].items() if k not in ("install_code", "kind",
                                                                                         "tech", "behaviour")})
            self.devices = data["devices"]
            _save(self.dir, data)

    def _associate(self) -> None:
        for eui, dev in self.devices.items():
            if dev["tech"] == "zigbee-se" and dev["state"] != "joined":
                dev["associations"] += 1
                self.send(f"assoc {eui} {dev['kind']}")
        self._store()

    def on_line(self, line: str) -> None:
        words = line.split()
        if not words or not self.answers:
            return
        op, args = words[0], words[1:]
        try:
            getattr(self, "_" + op)(*args)
        except (AttributeError, TypeError, ValueError, KeyError):
            self.log(f"han: frame ignored: {line!r}")

    def _ping(self, token):
        self.send(f"pong {token}")

    def _permit(self, seconds):
        self.permit_until = time.monotonic() + float(seconds)
        self._associate()

    def _deny(self, eui):
        self.devices[eui]["refused"] += 1
        self._store()

    def _key(self, eui, short, nonce, mac):
        dev = self._speaks(eui, "zigbee-se")
        key = self.keys[eui]
        if time.monotonic() > self.permit_until:
            return
        if mac != tag(key, "key", eui, short, nonce):
            # The transport key does not decrypt with this device's own link key: it gives up.
            dev["key_failures"] += 1
            self._store()
            return
        dev.update(state="joined", short=int(short))
        self._store()
        self.send(f"confirm {eui} {short} {tag(key, 'confirm', eui, short, nonce)}")

    def _speaks(self, eui, tech):
        """The device `eui` if it is of `tech`: a frame of another dialect means nothing to it."""
        dev = self.devices[eui]
        if dev["tech"] != tech:
            raise KeyError(eui)
        return dev

    def _joined(self, short, tech):
        for eui, dev in self.devices.items():
            if dev["state"] == "joined" and dev["short"] == int(short) and dev["tech"] == tech:
                return eui, dev
        return None, None

    def _answer(self, dev: dict, body: str) -> str | None:
        """What a joined device says to an application frame it took: None if it says nothing."""
        dev["frames_in"] += 1
        if dev["behaviour"] == "silent" or dev["behaviour"] == "flaky" and dev["frames_in"] % 2 == 0:
            answer = None
        elif body == "ping":
            answer = "pong"
        elif body == "selftest":
            fault = dev["behaviour"] == "failing-self-test"
            answer = "selftest:fail:" + _SELF_TEST_FAULT[dev["kind"]] if fault else "selftest:ok"
        else:
            answer = None
        dev["frames_out"] += answer is not None
        self._store()
        return answer

    def _deliver(self, tech, words, short, seq, body, mac):
        """An application frame of `tech`'s dialect (`words`: the meter's, the answer's and the
        one the answer's tag is made over) to the joined device at `short`, and its answer."""
        out, back, up = words
        eui, dev = self._joined(short, tech)
        if dev is None or mac != tag(self.keys[eui], out, short, seq, body):
            return
        answer = self._answer(dev, body)
        if answer is not None:
            self.send(f"{back} {short} {seq} {answer} {tag(self.keys[eui], up, short, seq, answer)}")

    def _leaves(self, eui, mac, *words):
        """The device leaves the network if `mac` is its key's tag over `words`."""
        dev = self.devices[eui]
        if dev["state"] == "joined" and mac == tag(self.keys[eui], *words):
            dev.update(state="left", short=None, leaves=dev["leaves"] + 1)
            self._store()

    def _data(self, short, seq, body, mac):
        self._deliver("zigbee-se", ("data", "data", "up"), short, seq, body, mac)

    def _leave(self, eui, short, mac):
        self._speaks(eui, "zigbee-se")
        self._leaves(eui, mac, "leave", eui, short)

    # -- new-tech: steered commissioning, mutual proofs, CoAP-like frames ------------------------
    def _steer(self, jid, seconds):
        self.steering[jid] = time.monotonic() + float(seconds)
        if float(seconds) > 0:
            self._joiner_starts(jid)

    def _joiner_starts(self, jid):
        eui = self.jids.get(jid)
        if eui is None or self.devices[eui]["state"] == "joined":
            return
        dev = self.devices[eui]
        dev["associations"] += 1
        self.hellos[eui] = os.urandom(8).hex()
        self._store()
        self.send(f"hello {jid} {dev['kind']} {self.hellos[eui]}")

    def _chal(self, jid, rloc, nonce, mac):
        eui = self.jids[jid]
        dev, key, theirs = self.devices[eui], self.keys[eui], self.hellos.get(eui)
        if theirs is None or time.monotonic() > self.steering.get(jid, 0):
            return
        if mac != tag(key, "chal", jid, rloc, theirs, nonce):
            # The meter's proof does not verify with this joiner's passcode: it gives up.
            dev["key_failures"] += 1
            self._store()
            return
        del self.hellos[eui]
        dev.update(state="joined", short=int(rloc))
        self._store()
        self.send(f"proof {jid} {rloc} {tag(key, 'proof', jid, rloc, theirs, nonce)}")

    def _coap(self, rloc, mid, body, mac):
        self._deliver("new-tech", ("coap", "ack", "ack"), rloc, mid, body, mac)

    def _release(self, jid, rloc, mac):
        self._leaves(self.jids[jid], mac, "release", jid, rloc)
