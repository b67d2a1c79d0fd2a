"""`meterfw`: a table of commands over the transport. Only main() prints errors and exits."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import CommandError, MeterfwError
from .image import ImageError, build_image, inspect, parse_image, write_image
from .keys import KeysError, init_keys, load_keys
from .paths import BOARD_NAMES, FIRMWARE
from .session import Meter
from .transport import DEFAULT_BAUD, Link

EXIT_REVERTED = 3
EXIT_REJECTED = 4
EXIT_FAILED = 5
_UPGRADE_EXIT = {"confirmed": 0, "reverted": EXIT_REVERTED, "rejected": EXIT_REJECTED, "failed": EXIT_FAILED}


def _emit(args, data, human: str) -> None:
    print(json.dumps(data, indent=None if args.json else 2) if args.json else human)


def _meter(args) -> Meter:
    if not args.port:
        raise CommandError("this command talks to a meter: give --port PORT (a device path or socket://host:port)")
    secret = None
    if args.keys:
        secret = load_keys(Path(args.keys), private=False).utility_secret
    return Meter(Link(args.port, baud=args.baud, timeout_s=args.timeout), utility_secret=secret)


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CommandError(f"no such file: {path}") from None
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror}") from None


# --- commands ---------------------------------------------------------------------------------

def cmd_keys_init(args) -> int:
    info = init_keys(Path(args.dir))
    _emit(args, info, f"keys written to {info['dir']}\n  vendor key id  {info['vendor_key_id']}\n"
                      f"  utility key id {info['utility_key_id']}")
    return 0


def cmd_image_build(args) -> int:
    if not (args.keys_dir or args.keys):
        raise CommandError("signing needs keys: give --keys KEYDIR (made by `meterfw keys init`)")
    keys = load_keys(Path(args.keys_dir or args.keys))
    data = build_image(Path(args.src), args.board, args.version, keys,
                       security_version=args.security_version, build_time=args.build_time)
    write_image(Path(args.output), data)
    info = inspect(data, keys)
    out = {"file": args.output, "bytes": len(data), "sha256": info["sha256"], "manifest": info["manifest"]}
    _emit(args, out, f"{args.output}: {args.board} {args.version}, {len(data)} bytes, "
                     f"{len(info['payload']['files'])} files, signed by {len(info['signatures'])} keys")
    return 0


def cmd_image_inspect(args) -> int:
    data = _read_file(args.file)
    keydir = args.keys_dir or args.keys
    keys = load_keys(Path(keydir), private=False) if keydir else None
    info = inspect(data, keys)
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


def cmd_status(args) -> int:
    st = _meter(args).status()
    slots = ", ".join(f"{k}: {v['version'] or 'empty'}" for k, v in sorted(st["slots"].items()))
    _emit(args, st, f"board {st['board']}  version {st['active_version']} in slot {st['active_slot']} "
                    f"({'confirmed' if st['confirmed'] else 'on trial'})\n"
                    f"slots {slots}\nregister {st['register_wh']:.3f} Wh  uptime {st['uptime_s']} s  "
                    f"boot reason {st['boot_reason']}")
    return 0


def cmd_read_intervals(args) -> int:
    recs = _meter(args).read_intervals(args.since_seq)
    lines = [f"{r['seq']:>6} {r['start']:>11} {r['duration_s']:>5}s {r['energy_wh']:>10.3f} Wh  "
             f"{','.join(r['flags'])}" for r in recs]
    _emit(args, recs, "\n".join(["   seq       start  dur     energy      flags"] + lines))
    return 0


def cmd_log(args) -> int:
    evs = _meter(args).read_events(args.since_seq)
    _emit(args, evs, "\n".join(f"{e['seq']:>6} {e['time']:>11} {e['code']:>4} {e['name']} ({e['value']})"
                               for e in evs))
    return 0


def cmd_revert(args) -> int:
    meter = _meter(args)
    before = meter.status()
    meter.revert()
    after = meter.wait_until(lambda s: s["active_slot"] != before["active_slot"], 40)
    if after is None:
        raise CommandError("the meter did not come back on the previous image within 40 s")
    out = {"result": "reverted", "from_version": before["active_version"], "to_version": after["active_version"]}
    _emit(args, out, f"reverted from {out['from_version']} to {out['to_version']}")
    return 0


def cmd_upgrade(args) -> int:
    from .upgrade import upgrade  # keeps rich out of the other commands' start-up
    data = _read_file(args.file)
    try:
        img = parse_image(data)
    except ImageError as e:
        raise CommandError(f"{args.file}: {e}") from None
    meter = _meter(args)
    with _progress(args, f"upgrade to {img.manifest['version']}") as progress:
        report = upgrade(meter, data, img, when=args.when, progress=progress)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    human = (f"{report['result']}: {report['from_version']} -> {report['to_version']}"
             + (f" ({report['reason']})" if report["reason"] else "")
             + f"\n  {report['image_bytes']} bytes in {report['seconds']} s"
             + (f", intervals missed {report['intervals_missed']}" if "intervals_missed" in report else ""))
    _emit(args, report, human)
    return _UPGRADE_EXIT[report["result"]]


class _progress:
    """A progress bar on stderr when it is a terminal and --json is off; otherwise silent."""

    def __init__(self, args, label: str):
        self._on = sys.stderr.isatty() and not args.json
        self._label = label

    def __enter__(self):
        if not self._on:
            return None
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
        self._bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), transient=True)
        self._bar.start()
        task = self._bar.add_task(self._label, total=None)
        return lambda done, total: self._bar.update(task, completed=done, total=total)

    def __exit__(self, *exc):
        if self._on:
            self._bar.stop()


# --- the table --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meterfw", description="Firmware manager for MicroPython meters")
    p.add_argument("--port", help="meter link: a serial device, or any pyserial URL such as socket://host:port")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help="serial speed (default %(default)s)")
    p.add_argument("--keys", help="key directory made by `meterfw keys init`")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each reply")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, fn, help, parent=sub):
        c = parent.add_parser(name, help=help, description=help)
        c.add_argument("--json", action="store_true", help="print machine-readable JSON")
        c.set_defaults(fn=fn)
        return c

    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="what", required=True)
    c = command("init", cmd_keys_init, "make vendor and utility key pairs", keys)
    c.add_argument("--dir", required=True)

    image = sub.add_parser("image", help="firmware images").add_subparsers(dest="what", required=True)
    c = command("build", cmd_image_build, "compile and sign an image", image)
    c.add_argument("--board", required=True, choices=BOARD_NAMES)
    c.add_argument("--version", required=True)
    c.add_argument("--keys", dest="keys_dir")
    c.add_argument("--src", default=str(FIRMWARE))
    c.add_argument("--security-version", type=int, default=0)
    c.add_argument("--build-time", type=int)
    c.add_argument("-o", "--output", required=True)
    c = command("inspect", cmd_image_inspect, "show an image's manifest and check its signatures", image)
    c.add_argument("file")
    c.add_argument("--keys", dest="keys_dir")

    command("status", cmd_status, "versions, slots, register, boot reason")
    c = command("upgrade", cmd_upgrade, "install an image and wait for the verdict")
    c.add_argument("file")
    c.add_argument("--when", choices=("boundary", "now"), default="boundary",
                   help="activate just after the next interval closes (default) or now")
    c.add_argument("--report", help="write the JSON report to this file")
    command("revert", cmd_revert, "go back to the previous image")
    read = sub.add_parser("read", help="read meter data").add_subparsers(dest="what", required=True)
    c = command("intervals", cmd_read_intervals, "interval records", read)
    c.add_argument("--since-seq", type=int, default=0)
    c = command("log", cmd_log, "the event log")
    c.add_argument("--since-seq", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (MeterfwError, ImageError, KeysError) as e:
        print(f"meterfw: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("meterfw: interrupted; the meter keeps what it had and an upgrade resumes where it stopped",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
