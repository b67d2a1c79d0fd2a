"""The `meterfw-sim` command line (the console script's entry point is main)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import (
    BOARDS, BOOTROM_NAME, DEFAULT_DEVICE_SCRIPT, PICO_EMULATOR, SIM_JSON, SimError, _device_script,
    _read_json, _resolve_dir,
)
from .control import command
from .han import add_device, list_devices, remove_device
from meterfw.han import KINDS, TECHS
from .startup import run, start, status, stop


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meterfw-sim",
        description="Run a simulated Pico meter: power, reset, watchdog and a serial port.",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("start", help="start (provisioning first if needed) a sim meter in DIR")
    s.add_argument("--dir", required=True, help="the sim meter's directory")
    s.add_argument("--image", help="image to provision a new flash.img with")
    s.add_argument("--keys", help="key directory for provisioning")
    s.add_argument("--baud", type=int, help="pace the line at 8N1 for this baud rate")
    s.add_argument("--interval-s", type=_number, help="metering interval (default: the board's)")
    s.add_argument("--seed", type=int, help="metrology seed (default 1)")
    s.add_argument("--load", metavar="PROFILE",
                   help="the premises' load on the metrology front-end (default mixed, or what DIR "
                        "had): mixed (0.7-2.2 kW with bursts of export), residential (night base "
                        "load, morning and evening peaks), vacant (no energy at all), solar (a "
                        "home with rooftop PV: export around midday), commercial (near the "
                        "meter's 24 kW rating in business hours). Daily curves run on UTC, or "
                        "on the premises' local time with PROFILE@+HH:MM")
    s.add_argument("--serial", help="meter serial number")
    s.add_argument("--uart-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="model an RP2040 UART: bytes arriving while flash is busy are lost beyond "
                        "its 32-byte FIFO (default: a USB-CDC link, which loses nothing)")
    s.add_argument("--tcp", type=int, metavar="PORT",
                   help="also listen on 127.0.0.1:PORT and bridge one client at a time to the line "
                        "(remote access; 0 picks a free port)")
    s.add_argument("--board", choices=BOARDS, help="sim (the unix port, default) or pico (the stock "
                   "MicroPython firmware on an emulated RP2040)")
    s.add_argument("--firmware", help="pico: the MicroPython RPI_PICO UF2 (default $PICO_FIRMWARE)")
    s.add_argument("--bootrom", help=f"pico: the RP2040 boot ROM (default $PICO_BOOTROM, or {BOOTROM_NAME} "
                   "beside the firmware or $PICO_FIRMWARE)")
    s.add_argument("--han", choices=("ok", "fail", "absent"),
                   help="the meter's HAN radio: fitted (ok), fitted but dead (fail) or none (absent, "
                        "the default); its devices are `meterfw-sim han add`'s. On a pico, a "
                        "co-processor on UART1, wired in when its flash is provisioned")
    s.add_argument("--nan-network", metavar="ID",
                   help="the mesh network id the NAN's collector admits (16 bits, e.g. 0x2C41, the "
                        "default; 'none': it serves the old serial profile alone)")
    s.add_argument("--device-script", help=argparse.SUPPRESS)

    han = sub.add_parser("han", help="the simulated home area network's devices (DIR/han.json)")
    hsub = han.add_subparsers(dest="han_cmd", required=True, metavar="ACTION")
    a = hsub.add_parser("add", help="put a device on the premises; it asks to join when the meter permits")
    a.add_argument("--eui64", required=True, help="the device's EUI-64 (16 hex digits)")
    a.add_argument("--install-code", required=True, help="its install code with the CRC-16 (hex, as labelled)")
    a.add_argument("--kind", required=True, choices=KINDS)
    a.add_argument("--tech", default="zigbee-se", choices=TECHS)
    how = a.add_mutually_exclusive_group()
    for flag, text in (("--silent", "joins, then answers nothing"), ("--flaky", "answers every other frame"),
                       ("--failing-self-test", "its self-test reports a fault")):
        how.add_argument(flag, dest="behaviour", action="store_const", const=flag[2:], help=text)
    r = hsub.add_parser("remove", help="take a device off the premises")
    r.add_argument("--eui64", required=True)
    hsub.add_parser("list", help="the devices and what the medium knows of each")
    for c in (a, r, hsub.choices["list"]):
        c.add_argument("--dir", required=True)
        c.add_argument("--json", action="store_true", help="print JSON")

    for name, text in (
        ("stop", "stop the supervisor and its device"),
        ("status", "show whether the sim meter runs, its boots and watchdog"),
        ("power-cycle", "cut the power now and switch it on again"),
        ("reset", "press the reset button"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("--dir", required=True)
        c.add_argument("--json", action="store_true", help="print JSON")
        if name == "power-cycle":
            c.add_argument("--off-s", type=float, default=0.0, help="how long the power stays off")

    r = sub.add_parser("run", help="run the supervisor in the foreground (what start detaches)")
    r.add_argument("--dir", required=True)
    r.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    r.add_argument("--device-script", help=argparse.SUPPRESS)
    return p


def _han(args) -> None:
    if args.han_cmd == "add":
        out = add_device(args.dir, args.eui64, args.install_code, args.kind, args.tech, args.behaviour or "normal")
        human = f"{out['eui64']}: {out['kind']} ({out['tech']}, {out['behaviour']}) on the premises"
    elif args.han_cmd == "remove":
        out = {"removed": remove_device(args.dir, args.eui64)}
        human = "removed" if out["removed"] else f"no device {args.eui64} on this HAN; nothing changed"
    else:
        out = list_devices(args.dir)
        human = "\n".join(f"{eui} {d['kind']:12} {d['tech']:9} {d['behaviour']:17} {d['state']:8} "
                          f"short {d['short']}" for eui, d in sorted(out.items())) or "no devices"
    print(json.dumps(out) if args.json else human)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "start":
            info = start(
                args.dir, image=args.image, keys=args.keys, baud=args.baud,
                interval_s=args.interval_s, seed=args.seed, serial=args.serial,
                device_script=args.device_script, uart_loss=args.uart_loss, tcp_port=args.tcp,
                board=args.board, firmware=args.firmware, bootrom=args.bootrom, load=args.load,
                han=args.han, nan_network=args.nan_network,
            )
            print(json.dumps(info), flush=True)
        elif args.cmd == "han":
            _han(args)
        elif args.cmd == "stop":
            stopped = stop(args.dir)
            if args.json:
                print(json.dumps({"dir": str(_resolve_dir(args.dir)), "stopped": stopped}))
            elif not stopped:
                print(f"meterfw-sim: {args.dir} is not running; nothing to stop")
        elif args.cmd == "status":
            st = status(args.dir)
            if args.json:
                print(json.dumps(st))
            else:
                wdt = f"armed ({st['watchdog_timeout_ms']} ms)" if st["watchdog_armed"] else "not armed"
                print(f"{st['dir']}: {st['state']}")
                print(f"  supervisor pid  {st['pid']}")
                print(f"  board           {st['board']}")
                print(f"  port            {st['port']}")
                if st["usb_port"]:
                    print(f"  usb port (REPL) {st['usb_port']}")
                print(f"  boots           {st['boots']} (last cause: {st['last_cause']})")
                print(f"  device pid      {st['device_pid']}")
                print(f"  watchdog        {wdt}")
                if st["nan"]:
                    nan = st["nan"]
                    net = "none" if nan["network_id"] is None else f"0x{nan['network_id']:04x}"
                    print(f"  nan             {nan['profile']} (mesh network admitted: {net}; packets "
                          f"to/from the meter {nan['mesh']['packets_to_meter']}/{nan['mesh']['packets_from_meter']})")
        elif args.cmd in ("power-cycle", "reset"):
            extra = (args.off_s,) if args.cmd == "power-cycle" else ()
            st = command(args.dir, args.cmd, *extra)
            if args.json:
                print(json.dumps({k: st.get(k) for k in ("state", "boots", "last_cause", "device_pid")}))
            else:
                print(f"{args.cmd}: boot {st.get('boots')} (cause {st.get('last_cause')}), device pid {st.get('device_pid')}")
        elif args.cmd == "run":
            d = _resolve_dir(args.dir)
            if not d.is_dir():
                raise SimError(f"{args.dir} is not a directory")
            board = (_read_json(d / SIM_JSON) or {}).get("board", "sim")
            script = _device_script(args.device_script) or (PICO_EMULATOR if board == "pico" else DEFAULT_DEVICE_SCRIPT)
            return run(d, script, args.ready_fd)
    except SimError as e:
        print(f"meterfw-sim: {e}", file=sys.stderr)
        return e.code
    return 0
