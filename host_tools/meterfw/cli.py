"""`meterfw`: a table of commands over the transport. Only main() prints errors and exits."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from . import protocol as P
from .errors import (EXIT_ERROR, EXIT_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_REJECTED,
                     EXIT_REVERTED, EXIT_SERIAL_MISMATCH, EXIT_UNHEALTHY, EXIT_USAGE, CommandError, MeterfwError)
from .delta import Delta, apply as apply_delta, build as build_delta, full_wire_bytes, is_delta, parse_delta
from .image import Image, ImageError, build_image, inspect, parse_image, write_image
from .keys import ROLES, KeysError, init_keys, load_keys
from .paths import BOARD_NAMES, BOOTLOADER, FIRMWARE
from .session import Meter
from .transport import DEFAULT_BAUD, Link
from .upgrade import DELTA_MODES, parse_time, parse_when, revert, upgrade

from . import office_cli  # noqa: E402 -- the back office's commands use this module's helpers

_UPGRADE_EXIT = {"confirmed": EXIT_OK, "reverted": EXIT_REVERTED, "rejected": EXIT_REJECTED, "failed": EXIT_FAILED}
EXIT_CODES = (  # for --help; README lists the same
    (EXIT_OK, "done (upgrade: confirmed)"),
    (EXIT_ERROR, "an error: a bad file, key directory or value, the link, a refusal, a malformed reply"),
    (EXIT_UNHEALTHY, "health: a critical or important item failed"),
    (EXIT_REVERTED, "upgrade: reverted, the meter went back to the previous image"),
    (EXIT_REJECTED, "upgrade: rejected, the image was refused and the meter kept what it had"),
    (EXIT_FAILED, "upgrade: failed, no verdict in time"),
    (EXIT_SERIAL_MISMATCH, "--serial: the meter on the port is another one; nothing was done"),
    (EXIT_USAGE, "usage: a command line meterfw does not take"),
    (EXIT_INTERNAL, "internal error: a defect of meterfw (please report it)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)


def _emit(args, data, human: str) -> None:
    print(json.dumps(data, indent=None if args.json else 2) if args.json else human)


def _meter(args) -> Meter:
    if not args.port:
        raise CommandError("this command talks to a meter: give --port PORT (a device path or socket://host:port)")
    secret = None
    if args.keys:
        secret = load_keys(Path(args.keys), private=False).utility_secret
    return Meter(Link(args.port, baud=args.baud, timeout_s=args.timeout), utility_secret=secret,
                 expect_serial=args.expect_serial)


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CommandError(f"no such file: {path}") from None
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror}") from None


def _write_file(path: Path, write) -> None:
    try:
        write(Path(path))
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror}") from None


def _read_image(path: str) -> tuple[bytes, Image | Delta | None, str | None]:
    """An image or delta file: (data, image or delta, None), or (data, None, "path: why") when
    the bytes are no usable one. A file that cannot be read is an error (CommandError), not a
    verdict."""
    data = _read_file(path)
    try:
        return data, parse_delta(data) if is_delta(data) else parse_image(data), None
    except ImageError as e:
        return data, None, f"{path}: {e}"


def _deltas(img: Image | Delta | None, folder: Path) -> list:
    """The deltas in `folder` (*.mfd) that make `img`; files that are no delta are skipped."""
    if not isinstance(img, Image) or not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.mfd")):
        try:
            d = Delta.read(path)
        except ImageError:
            continue
        if d.image_id == img.image_id:
            found.append(d)
    return found


# --- commands ---------------------------------------------------------------------------------

def cmd_keys_init(args) -> int:
    info = init_keys(Path(args.dir), args.role, Path(args.vendor_pub) if args.vendor_pub else None)
    _emit(args, info, f"{info['role']} keys written to {info['dir']}"
                      + "".join(f"\n  {role} key id {info[f'{role}_key_id']}" for role in ("vendor", "utility")
                                if f"{role}_key_id" in info))
    return 0


def cmd_image_build(args) -> int:
    if not (args.keys_dir or args.keys):
        raise CommandError("signing needs keys: give --keys KEYDIR (made by `meterfw keys init`)")
    keys = load_keys(Path(args.keys_dir or args.keys))
    src = args.src or (BOOTLOADER if args.kind == "bootloader" else FIRMWARE)
    data = build_image(Path(src), args.board, args.version, keys, kind=args.kind,
                       security_version=args.security_version, build_time=args.build_time)
    _write_file(args.output, lambda p: write_image(p, data))
    info = inspect(data, keys)
    out = {"file": args.output, "bytes": len(data), "sha256": info["sha256"], "manifest": info["manifest"]}
    _emit(args, out, f"{args.output}: {args.board} {args.version}, {len(data)} bytes, "
                     f"{len(info['payload']['files'])} files, signed by {len(info['signatures'])} keys")
    return 0


def cmd_image_delta(args) -> int:
    old, new = _read_image(args.from_file), _read_image(args.to_file)
    for path, (_, img, why) in ((args.from_file, old), (args.to_file, new)):
        if img is None or not isinstance(img, Image):
            raise CommandError(why or f"{path} is a delta, not an image")
    d = build_delta(old[1], new[1])
    if apply_delta(old[1].data, d) != new[1].data:  # what a meter will make of it, checked here
        raise CommandError("the delta does not rebuild the new image: nothing written")
    data = d.encode()
    _write_file(args.output, lambda p: write_image(p, data))
    full = full_wire_bytes(new[1], d.block_size)
    out = {"file": args.output, "bytes": len(data), "base_image_id": d.base_id.hex(),
           "image_id": d.image_id.hex(), "blocks": len(d.recipes), "wire_bytes": d.wire_bytes(),
           "full_wire_bytes": full, "ratio": round(d.wire_bytes() / full, 4)}
    _emit(args, out, f"{args.output}: {old[1].manifest['version']} -> {new[1].manifest['version']}, "
                     f"{out['wire_bytes']} bytes on the wire against {full} for the full image "
                     f"({100 * out['ratio']:.1f}%)")
    return 0


def cmd_image_inspect(args) -> int:
    data = _read_file(args.file)
    keydir = args.keys_dir or args.keys
    keys = load_keys(Path(keydir), private=False) if keydir else None
    info = inspect(parse_image(data), keys)  # parsed after the keys load: a bad key directory is said first
    m = info["manifest"]
    lines = [f"{args.file}: {info['size']} bytes, sha256 {info['sha256']}"]
    lines += [f"  {k:18} {m[k]}" for k in sorted(m)]
    for s in info["signatures"]:
        verdict = {True: "valid", False: "INVALID", None: "not checked (no --keys)"}[s["verified"]]
        lines.append(f"  signature          {s['role']} key {s['key_id']}: {verdict}")
    lines.append(f"  payload            {len(info['payload']['files'])} files, hash "
                 f"{'ok' if info['payload']['sha256_ok'] else 'MISMATCH'}")
    lines += [f"  problem            {p}" for p in info["problems"]]
    _emit(args, info, "\n".join(lines))
    return 1 if info["problems"] else 0


def _keys_dir(args) -> Path:
    if not (args.keys_dir or args.keys):
        raise CommandError("provisioning needs keys: give --keys KEYDIR (made by `meterfw keys init`)")
    return Path(args.keys_dir or args.keys)


def cmd_uf2(args) -> int:
    from .provision import provision_image
    from .uf2 import write_meter_uf2
    firmware, image, keys_dir = _read_file(args.firmware), _read_file(args.image), _keys_dir(args)
    out = write_meter_uf2(firmware, provision_image(image), keys_dir, args.board, Path(args.output),
                          serial=args.serial)
    _emit(args, out, f"{out['output']}: {out['board']} meter {out['serial']}: firmware {out['firmware_bytes']} "
                     f"bytes + filesystem {out['fs_bytes']} bytes, {out['blocks']} UF2 blocks")
    return 0


def cmd_provision(args) -> int:
    from .provision import provision_image, provision_repl
    if not args.port:
        raise CommandError("provision talks to the board's REPL: give --port PORT (e.g. /dev/ttyACM0)")
    image, keys_dir = _read_file(args.image), _keys_dir(args)
    img = provision_image(image)
    with _progress(args, "provision") as ui:
        out = provision_repl(args.port, img, keys_dir, args.board, serial=args.serial, wipe=args.wipe,
                             progress=ui.progress)
    _emit(args, out, f"{out['port']}: {out['board']} meter {out['serial']} provisioned, {out['files']} files "
                     f"({out['bytes']} bytes) verified in {out['seconds']} s; it restarts as a meter")
    return 0


def cmd_status(args) -> int:
    st = _meter(args).status()
    slots = ", ".join(f"{k}: {v['version'] or 'empty'}" for k, v in sorted(st["slots"].items()))
    head = (f"board {st['board']}  serial {st.get('serial')}  version {st['active_version']} in slot "
            f"{st['active_slot']} ({'confirmed' if st['confirmed'] else 'on trial'})\nslots {slots}\n")
    if st.get("mode") == "recovery":
        body = (f"RECOVERY CONSOLE: {st['recovery_reason']}\n"
                f"upload a good image with `upgrade`, or `revert`, or `retry` the active one")
    else:
        body = (f"register {st['register_wh']:.3f} Wh  uptime {st['uptime_s']} s  "
                f"boot reason {st['boot_reason']}")
    _emit(args, st, head + body)
    return 0


def cmd_allow(args) -> int:
    """Let a rejected image be activated again: an operator's authenticated decision."""
    _, img, why = _read_image(args.file)
    if img is None:
        raise CommandError(why)
    image_id = img.image_id
    r = _meter(args).privileged(P.UNREJECT, image_id)
    out = {"image_id": image_id.hex(), "version": img.manifest["version"], "was_rejected": r["unrejected"]}
    _emit(args, out, f"{img.manifest['version']} ({image_id.hex()[:16]}) "
                     + ("may be activated again" if r["unrejected"] else "was not rejected; nothing changed"))
    return 0


def cmd_retry(args) -> int:
    """From the recovery console: give the active image a fresh set of boot attempts."""
    meter = _meter(args)
    if meter.status().get("mode") != "recovery":
        raise CommandError("the meter is not in its recovery console; nothing to retry")
    meter.privileged(P.RETRY)
    st = meter.wait_until(lambda s: s.get("mode") != "recovery", 40)
    out = {"result": "running" if st else "recovery", "active_version": st and st["active_version"]}
    _emit(args, out, "the application is running again" if st else "the meter is still in its recovery console")
    return 0 if st else 1


def cmd_read_intervals(args) -> int:
    since_s = parse_time(args.since, "--since") if args.since else 0
    recs = _meter(args).read_intervals(args.since_seq, since_s)
    lines = [f"{r['seq']:>6} {r['start']:>11} {r['duration_s']:>5}s {r['energy_wh']:>10.3f} Wh "
             f"{r['received_mwh'] / 1000:>9.3f} Wh  {','.join(r['flags'])}" for r in recs]
    _emit(args, recs, "\n".join(["   seq       start  dur  delivered        received    flags"] + lines))
    return 0


def cmd_log(args) -> int:
    evs = _meter(args).read_events(args.since_seq)
    _emit(args, evs, "\n".join(f"{e['seq']:>6} {e['time']:>11} {e['code']:>4} {e['name']} ({e['value']})"
                               for e in evs))
    return 0


def _iso(t_s: float) -> str:
    from datetime import datetime, timezone
    try:
        return datetime.fromtimestamp(t_s, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):  # a meter's time outside what a datetime holds
        return f"{t_s} s"


def cmd_read_registers(args) -> int:
    r = _meter(args).read_registers()
    lines = [f"delivered {r['delivered_mwh'] / 1e6:.6f} kWh  received {r['received_mwh'] / 1e6:.6f} kWh  "
             f"net {r['net_mwh'] / 1e6:.6f} kWh  (multiplier {r['multiplier']})",
             f"lifetime delivered {r['lifetime_delivered_mwh'] / 1e6:.6f} kWh, received "
             f"{r['lifetime_received_mwh'] / 1e6:.6f} kWh; register resets {r['resets']}"]
    if r["prepayment"]:
        lines.append(f"prepayment balance {r['prepayment']['balance_wh']} Wh of {r['prepayment']['credit_wh']} Wh")
    lines += [f"alarm {a['seq']}: {a['name']}: {a['message']}" for a in r["alarms"]]
    _emit(args, r, "\n".join(lines))
    return 0


def cmd_read_state(args) -> int:
    st = _meter(args).read_state()
    lines = [f"meter state v{st['version']} seq {st['seq']} hash {st['hash'][:16]}"]
    lines += [f"  {k:16} {json.dumps(v)}" for k, v in st.items() if k not in ("version", "seq", "hash")]
    _emit(args, st, "\n".join(lines))
    return 0


def _assignments(items: list[str]) -> dict:
    changes = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CommandError(f"state set takes SETTING=VALUE (VALUE in JSON), not {item!r}")
        try:
            changes[key] = json.loads(value)
        except ValueError:
            changes[key] = value
        except RecursionError:
            raise CommandError(f"the value of {key} is nested too deeply") from None
    return changes


def _json_object_file(path: str) -> dict:
    try:
        value = json.loads(_read_file(path))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise CommandError(f"{path} is not JSON") from None
    if not isinstance(value, dict):
        raise CommandError(f"{path} holds JSON but not an object of settings")
    return value


def cmd_state_set(args) -> int:
    changes = _assignments(args.settings)
    if args.file:
        changes = {**_json_object_file(args.file), **changes}
    if not changes:
        raise CommandError("nothing to set: give SETTING=VALUE pairs or --file FILE")
    r = _meter(args).set_state(changes)
    _emit(args, r, f"meter state seq {r['seq']} hash {r['hash'][:16]}")
    return 0


def cmd_health(args) -> int:
    r = _meter(args).health(with_time=not args.no_time)
    lines = [f"{i['check']:12} {i['status']:7} {i['severity']:10} "
             + (i["message"] or "") + (f" [{i['value']}]" if i["value"] is not None else "") for i in r["items"]]
    lines.append("healthy" if r["ok"] else "UNHEALTHY")
    _emit(args, r, "\n".join(lines))
    return 0 if r["ok"] else EXIT_UNHEALTHY


def cmd_time(args) -> int:
    import time
    meter = _meter(args)
    before = meter.time_get()
    if args.action == "get":
        out = before
        human = f"meter time {_iso(before['time_ms'] / 1000)}  offset {before['offset_ms']:+d} ms  " \
                f"{'valid' if before['valid'] else 'INVALID'}"
    else:
        if args.action == "set" and args.to:
            target_ms = parse_time(args.to, "--to") * 1000
        else:
            target_ms = None
        if args.action == "sync" and abs(before["offset_ms"]) <= args.tolerance_ms:
            out = {"action": "sync", "set": False, "offset_before_ms": before["offset_ms"],
                   "offset_after_ms": before["offset_ms"]}
            _emit(args, out, f"meter time is {before['offset_ms']:+d} ms off; within {args.tolerance_ms} ms, left alone")
            return 0
        # Our time when the request arrives: half the round trip after we send it.
        r = meter.time_set(target_ms if target_ms is not None else time.time_ns() // 1_000_000 + before["round_trip_ms"] // 2)
        after = meter.time_get()
        out = {"action": args.action, "set": True, "old_ms": r["old_ms"], "new_ms": r["new_ms"],
               "delta_ms": r["delta_ms"], "interval_split": r["interval_split"],
               "offset_before_ms": before["offset_ms"], "offset_after_ms": after["offset_ms"]}
        human = f"meter time set to {_iso(r['new_ms'] / 1000)} ({r['delta_ms']:+d} ms); offset now {after['offset_ms']:+d} ms"
    _emit(args, out, human)
    return 0


def cmd_relay(args) -> int:
    meter = _meter(args)
    r = meter.read_state()["relay"] if args.action == "status" else meter.relay(args.action)
    human = (f"relay {r['latched'] or 'not fitted'}; meter state says {r['commanded']}"
             + ("" if r["agrees"] else "  (DIFFERENT: check the meter)")
             + (f"; {'moved' if r['moved'] else 'already there, not moved'}" if "moved" in r else ""))
    _emit(args, r, human)
    return 0


def cmd_alarms(args) -> int:
    meter = _meter(args)
    pushed = meter.listen(args.listen) if args.listen else meter.pushed_alarms()
    held = meter.read_alarms()
    alarms = {a["seq"]: a for a in pushed + held}
    out = {"alarms": [alarms[k] for k in sorted(alarms)], "acknowledged": 0}
    if args.ack and alarms:
        out["acknowledged"] = meter.ack_alarms(alarms)["acknowledged"]
    lines = [f"{a['seq']:>5} {_iso(a['time'])} {a['name']}: {a['message']} ({a['report']})" for a in out["alarms"]]
    lines.append(f"{len(alarms)} alarms" + (f", {out['acknowledged']} acknowledged" if args.ack else ""))
    _emit(args, out, "\n".join(lines))
    return 0


def cmd_display(args) -> int:
    r = _meter(args).display()
    _emit(args, r, r["text"] or "(display blank)")
    return 0


def _han_device(d: dict) -> str:
    o = d.get("outcome") or {}
    verdict = ("ok" if o.get("ok") else f"FAILED: {o.get('message')}") if o else "waiting to join"
    return f"{d['eui64']} {d['kind']:12} {d['tech']:9} {d['state']:10} short {d['short']}  {verdict}"


def cmd_han_join(args) -> int:
    from .han import HanError, parse_eui64, parse_install_code
    try:  # said here, before the meter is asked: it would refuse them the same way
        eui, code = parse_eui64(args.eui64), parse_install_code(args.install_code)
    except HanError as e:
        raise CommandError(str(e)) from None
    meter = _meter(args)
    r = meter.han_join(eui, code.hex(), args.window_s, args.tech, args.kind)
    if args.wait:
        r = meter.han_outcome(eui, args.window_s + args.wait) or r
    o = r.get("outcome")
    _emit(args, r, _han_device(r) if o or args.wait else
          f"{eui}: join window open for {args.window_s} s; `meterfw han list` shows the outcome")
    return 0 if not args.wait or o and o["ok"] else 1


def cmd_han_list(args) -> int:
    r = _meter(args).han_table()
    head = (f"HAN radio {'fitted' if r['radio'] else 'not fitted'}; drivers: {', '.join(r['drivers'])}; "
            f"{r['jobs']} jobs waiting")
    _emit(args, r, "\n".join([head] + [_han_device(d) for d in r["devices"]]))
    return 0


def cmd_han_remove(args) -> int:
    from .han import HanError, parse_eui64
    try:
        eui = parse_eui64(args.eui64)
    except HanError as e:
        raise CommandError(str(e)) from None
    r = _meter(args).han_remove(eui)
    _emit(args, r, f"{eui} removed; its key is erased on the meter")
    return 0


def cmd_registers_reset(args) -> int:
    r = _meter(args).reset_registers()
    b = r["before"]
    _emit(args, r, f"registers reset (reset {b['resets']}); before: delivered {b['delivered_mwh']} mWh, "
                   f"received {b['received_mwh']} mWh")
    return 0


def cmd_revert(args) -> int:
    r = revert(_meter(args))
    if r["result"] != "confirmed":
        raise CommandError(r["reason"])
    out = {**r, "result": "reverted"}
    disc = out["discrepancies"]
    _emit(args, out, f"reverted from {out['from_version']} to {out['to_version']}; {len(disc)} discrepancies"
                     + "".join(f"\n  - {d}" for d in disc))
    return 0


def cmd_upgrade(args) -> int:
    data, img, why = _read_image(args.file)
    when, at_s = parse_when(args.when)
    if img is None:  # nothing to ask the meter: the image itself is unusable
        return _upgrade_done(args, {"result": "rejected", "reason": why, "from_version": None,
                                    "to_version": None, "image_bytes": len(data), "seconds": 0})
    deltas = [] if args.delta == "never" else _deltas(img, Path(args.delta_dir or Path(args.file).parent))
    meter = _meter(args)
    snaps: dict = {}
    with _progress(args, f"upgrade to {img.manifest['version']}") as ui:
        report = upgrade(meter, img, when=when, at_s=at_s, registers=args.registers, ack=args.ack,
                         progress=ui.progress, stage=ui.stage, deltas=deltas, delta=args.delta,
                         keep=lambda key, value: snaps.__setitem__(key, value))
    return _upgrade_done(args, report, snaps)


def _upgrade_done(args, report: dict, snaps: dict | None = None) -> int:
    if args.report and str(args.report).endswith((".html", ".htm")):
        from . import html_report
        seen = {r["seq"]: r for key in ("before", "after") for r in (snaps or {}).get(key, {}).get("intervals", [])}
        page = html_report.render_upgrade(report, [seen[k] for k in sorted(seen)])
        _write_file(args.report, lambda p: html_report.write(p, page))
    elif args.report:
        _write_file(args.report, lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))
    if args.json:
        print(json.dumps(report))
    else:
        if report["from_version"] is not None:
            lines = [f"{report['result']}: {report['from_version']} -> {report['to_version']}"
                     + (f" ({report['reason']})" if report["reason"] else "")]
            if "transfer_seconds" in report:
                lines.append(f"  {report['image_bytes']} bytes ({report['method']}: {report['bytes_on_wire']} on the "
                             f"wire) in {report['transfer_seconds']} s ({report['transfer_bytes_per_s']} B/s), "
                             f"resumed from block {report['resumed_from_block']}")
            if "intervals_missed" in report:
                lines.append(f"  intervals missed {report['intervals_missed']}, duplicated "
                             f"{report['intervals_duplicated']}, energy conserved {report['energy_conserved']}")
            disc = report.get("discrepancies")
            if disc is not None:
                lines.append(f"  {len(disc)} discrepancies between before and after" + (":" if disc else ""))
                lines += [f"    - {d}" for d in disc]
            print("\n".join(lines))
        if report["result"] == "rejected":
            print(f"meterfw: rejected: {report['reason']}", file=sys.stderr)
    return _UPGRADE_EXIT[report["result"]]


class _progress:
    """A progress bar on stderr when it is a terminal and --json is off; otherwise silent."""

    def __init__(self, args, label: str):
        self._on = sys.stderr.isatty() and not args.json
        self._label = label
        self.progress = self.stage = None

    def __enter__(self):
        if not self._on:
            return self
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
        self._bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), transient=True)
        self._bar.start()
        task = self._bar.add_task(self._label, total=None)
        self.progress = lambda done, total: self._bar.update(task, completed=done, total=total)
        self.stage = lambda name: self._bar.update(task, description=f"{self._label}: {name}")
        return self

    def __exit__(self, *exc):
        if self._on:
            self._bar.stop()


# --- the table --------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """A usage error is one line too, `meterfw: ...`, and exits EXIT_USAGE (not argparse's 2,
    which `health` gives an unhealthy meter)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"meterfw: {_one_line(message)} (see `{self.prog} --help`)\n")


def _number(kind, what: str, zero: bool = False):
    """An argparse type: a finite number of `kind` above 0 (or 0 itself, with zero)."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and (v > 0 or zero and v == 0)):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return v
    return parse


_BAUD = _number(int, "a baud rate")
_TIMEOUT = _number(float, "a number of seconds above 0")
_SECONDS = _number(float, "a number of seconds", zero=True)


def _default_timeout() -> float:
    try:
        return _TIMEOUT(os.environ.get("METERFW_TIMEOUT", "3.0"))
    except argparse.ArgumentTypeError:
        raise SystemExit(f"meterfw: METERFW_TIMEOUT={os.environ['METERFW_TIMEOUT']!r} is not a number of "
                         f"seconds above 0") from None


def build_parser() -> argparse.ArgumentParser:
    epilog = "exit codes:\n" + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)
    p = _Parser(prog="meterfw", description="Firmware manager for MicroPython meters", epilog=epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", help="meter link: a serial device, or any pyserial URL such as socket://host:port")
    p.add_argument("--baud", type=_BAUD, default=DEFAULT_BAUD, help="serial speed (default %(default)s)")
    p.add_argument("--keys", help="key directory made by `meterfw keys init`")
    p.add_argument("--timeout", type=_TIMEOUT, default=_default_timeout(),
                   help="seconds to wait for each reply (default $METERFW_TIMEOUT or %(default)s)")
    p.add_argument("--serial", dest="expect_serial", metavar="SERIAL",
                   help="the serial of the meter expected on --port: any other is refused before anything "
                        f"is done on it (exit {EXIT_SERIAL_MISMATCH})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, fn, help, parent=sub):
        c = parent.add_parser(name, help=help, description=help)
        c.add_argument("--json", action="store_true", help="print machine-readable JSON")
        c.set_defaults(fn=fn)
        return c

    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="what", required=True)
    c = command("init", cmd_keys_init, "make vendor and utility key pairs", keys)
    c.add_argument("--dir", required=True)
    c.add_argument("--role", choices=ROLES, default="both",
                   help="both (a lab's single directory, the default), or the vendor's or the utility's own")
    c.add_argument("--vendor-pub", help="role utility: the vendor's public key (vendor.pub) the utility trusts")

    image = sub.add_parser("image", help="firmware images").add_subparsers(dest="what", required=True)
    c = command("build", cmd_image_build, "compile and sign an image", image)
    c.add_argument("--board", required=True, choices=BOARD_NAMES)
    c.add_argument("--version", required=True)
    c.add_argument("--keys", dest="keys_dir")
    c.add_argument("--kind", choices=("firmware", "bootloader"), default="firmware",
                   help="the meter application (the default), or the bootloader (installed beside the running one)")
    c.add_argument("--src", help="the sources (default: firmware/, or bootloader/ for --kind bootloader)")
    c.add_argument("--security-version", type=int, default=0)
    c.add_argument("--build-time", type=int)
    c.add_argument("-o", "--output", required=True)
    c = command("delta", cmd_image_delta, "build a delta: what turns a meter running one image into "
                "one holding another, block by block", image)
    c.add_argument("--from", dest="from_file", required=True, metavar="OLD", help="the image the meter runs")
    c.add_argument("--to", dest="to_file", required=True, metavar="NEW", help="the image to upgrade it to")
    c.add_argument("-o", "--output", required=True)
    c = command("inspect", cmd_image_inspect, "show an image's manifest and check its signatures", image)
    c.add_argument("file")
    c.add_argument("--keys", dest="keys_dir")
    office_cli.add_image_commands(image, command)

    c = command("uf2", cmd_uf2, "one UF2 for a Pico: stock MicroPython and a provisioned meter filesystem")
    c.add_argument("--board", required=True, choices=BOARD_NAMES)
    c.add_argument("--firmware", required=True, help="the board's stock MicroPython UF2 (from micropython.org)")
    c.add_argument("--image", required=True, help="the image for slot a")
    c.add_argument("--keys", dest="keys_dir")
    c.add_argument("--serial", help="the meter's serial number (default: derived from the output path)")
    c.add_argument("-o", "--output", required=True)
    c = command("provision", cmd_provision, "provision a Pico running stock MicroPython through its REPL")
    c.add_argument("--port", default=argparse.SUPPRESS, help="the board's USB serial port (its REPL)")
    c.add_argument("--board", required=True, choices=BOARD_NAMES)
    c.add_argument("--image", required=True, help="the image for slot a")
    c.add_argument("--keys", dest="keys_dir")
    c.add_argument("--serial", help="the meter's serial number (default: derived from the chip's unique id)")
    c.add_argument("--wipe", action="store_true", help="remove an old meter's files and data first")

    command("status", cmd_status, "versions, slots, register, boot reason")
    c = command("upgrade", cmd_upgrade, "install an image and wait for the verdict")
    c.add_argument("file")
    c.add_argument("--when", nargs="+", default=["boundary"], metavar="WHEN",
                   help="`now`, `boundary` (the default: just after the next interval closes) or "
                        "`at TIME` (epoch seconds or ISO-8601 UTC); never inside a scheduled pricing event")
    c.add_argument("--registers", choices=("preserve", "reset"), default="preserve",
                   help="keep the energy registers (default) or reset them on the new image's first boot")
    c.add_argument("--ack", choices=("immediate", "next-read"), default="immediate",
                   help="report the new image's failures at once (default) or with the next read")
    c.add_argument("--report", help="write the report to this file: JSON, or a page with the plot for FILE.html")
    c.add_argument("--delta", choices=DELTA_MODES, default="auto",
                   help="send a delta for the image the meter runs when one is at hand and costs less on the "
                        "wire (auto, the default), never, or only a delta")
    c.add_argument("--delta-dir", metavar="DIR", help="where to look for deltas (*.mfd; default: FILE's folder)")
    command("revert", cmd_revert, "go back to the previous image")
    c = command("allow", cmd_allow, "let a rejected image be activated again (authenticated)")
    c.add_argument("file")
    command("retry", cmd_retry, "recovery console: boot the active image again")
    read = sub.add_parser("read", help="read meter data").add_subparsers(dest="what", required=True)
    c = command("intervals", cmd_read_intervals, "interval records", read)
    c.add_argument("--since-seq", type=int, default=0)
    c.add_argument("--since", help="records starting at or after TIME (epoch seconds or ISO-8601)")
    c = command("events", cmd_log, "the event log", read)
    c.add_argument("--since-seq", type=int, default=0)
    command("registers", cmd_read_registers, "energy registers, and alarms waiting for this read", read)
    command("state", cmd_read_state, "the meter state record", read)
    c = command("log", cmd_log, "the event log")
    c.add_argument("--since-seq", type=int, default=0)
    c = command("health", cmd_health, "run the meter's health check (exit 2 when unhealthy)")
    c.add_argument("--no-time", action="store_true", help="do not send our clock for the offset check")
    c = command("time", cmd_time, "the meter's clock: get, set (authenticated) or sync")
    c.add_argument("action", nargs="?", choices=("get", "set", "sync"), default="get")
    c.add_argument("--to", help="time to set (epoch seconds or ISO-8601); default: ours")
    c.add_argument("--tolerance-ms", type=int, default=1000, help="sync leaves an offset this small alone")
    c = command("relay", cmd_relay, "the service relay: status, connect or disconnect (authenticated)")
    c.add_argument("action", nargs="?", choices=("status", "connect", "disconnect"), default="status")
    c = command("alarms", cmd_alarms, "alarms the meter holds until acknowledged")
    c.add_argument("--ack", action="store_true", help="acknowledge the alarms shown (authenticated)")
    c.add_argument("--listen", type=_SECONDS, default=0, metavar="S", help="also collect pushed alarms for S seconds")
    state = sub.add_parser("state", help="change the meter state").add_subparsers(dest="what", required=True)
    c = command("set", cmd_state_set, "change meter state settings (authenticated)", state)
    c.add_argument("settings", nargs="*", metavar="SETTING=VALUE", help="e.g. multiplier=40 'limiting={\"enabled\": true}'")
    c.add_argument("--file", help="a JSON object of settings")
    command("display", cmd_display, "the notice on the meter's display")
    regs = sub.add_parser("registers", help="energy registers").add_subparsers(dest="what", required=True)
    command("reset", cmd_registers_reset, "reset the energy registers, logging them first (authenticated)", regs)
    han = sub.add_parser("han", help="the home area network: one meter's link (join, list, remove) "
                         "and the back office's enrollment registry").add_subparsers(
        dest="what", required=True)
    c = command("join", cmd_han_join, "enroll a device: the meter opens a join window for it and the device "
                "joins by itself (authenticated)", han)
    c.add_argument("--eui64", required=True, help="the device's EUI-64 (16 hex digits)")
    c.add_argument("--install-code", required=True, help="its install code with the CRC-16, hex as labelled")
    c.add_argument("--tech", default="zigbee-se", help="its technology (default zigbee-se)")
    c.add_argument("--kind", choices=("thermostat", "display", "load-control", "ev-charger"))
    c.add_argument("--window-s", type=int, default=180, help="how long the window stays open (1-254 s)")
    c.add_argument("--wait", type=_SECONDS, default=0, metavar="S",
                   help="wait for the outcome up to the window and S seconds more (exit 1 when it failed)")
    command("list", cmd_han_list, "the device table and each device's last outcome", han)
    c = command("remove", cmd_han_remove, "unenroll a device: its key is erased on the meter (authenticated)", han)
    c.add_argument("--eui64", required=True)
    office_cli.add_han_commands(han, command)
    office_cli.add_commands(sub, command)
    return p


def _one_line(text: str) -> str:
    """A message as one line: a meter's refusal or an OS error may carry line breaks."""
    return " ".join(str(text).split()) or "(no message)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (MeterfwError, ImageError, KeysError) as e:
        print(f"meterfw: {_one_line(e)}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_ERROR)
    except KeyboardInterrupt:
        print("meterfw: interrupted; the meter keeps what it had and an upgrade resumes where it stopped",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 -- the last resort: a defect of ours, still one line
        if os.environ.get("METERFW_DEBUG"):
            import traceback
            traceback.print_exc()
        print(f"meterfw: internal error: {type(e).__name__}: {_one_line(e)} "
              "(please report; run with METERFW_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
