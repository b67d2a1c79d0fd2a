"""The back office's commands (`meterfw fleet|campaign|mdms ...`, `image approve`): the same table
of commands as cli.py, over the database (store.py) instead of one meter's link."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import campaign as C
from . import cli
from . import enrollment as E
from . import fleet, html_report, mdms
from .errors import CommandError
from .image import ImageError, approve_image, parse_image, write_image
from .keys import load_keys
from .store import Store


def _db(args) -> Store:
    return Store(args.db)


def _selection(args) -> fleet.Selection:
    return fleet.Selection(boards=tuple(args.board or ()), versions=tuple(args.version or ()),
                           areas=tuple(args.area or ()), tags=tuple(args.tag or ()), serials=tuple(args.meter or ()))


def _keys(args, *, needed: str):
    keydir = args.keys_dir or args.keys
    if not keydir:
        raise CommandError(f"{needed}: give --keys UTILITY_KEYDIR (made by `meterfw keys init --role utility`)")
    return load_keys(Path(keydir), private=False)


# --- fleet ------------------------------------------------------------------------------------------

def cmd_fleet_import(args) -> int:
    text = cli._read_file(args.file).decode("utf-8", "replace")
    with _db(args) as store:
        out = fleet.import_meters(store, fleet.parse_csv(text, args.file))
    cli._emit(args, out, f"{out['meters']} meters: {out['added']} added, {out['updated']} updated")
    return 0


def _fleet_lines(rows: list[dict]) -> str:
    head = f"{'serial':12} {'board':6} {'area':10} {'version':9} {'test':4} {'tags':16} url"
    return "\n".join([head] + [f"{m['serial']:12} {m['board']:6} {m['area']:10} {m['version'] or '?':9} "
                               f"{'yes' if m['test_population'] else '':4} {','.join(m['tags']):16} {m['url']}"
                               for m in rows])


def cmd_fleet_list(args) -> int:
    with _db(args) as store:
        rows = [m.as_dict() for m in fleet.meters(store, _selection(args))]
    cli._emit(args, rows, _fleet_lines(rows) + f"\n{len(rows)} meters")
    return 0


def cmd_fleet_discover(args) -> int:
    with _db(args) as store, cli._progress(args, "discover") as ui:
        rows = fleet.discover(store, _selection(args), timeout_s=args.timeout, progress=ui.progress)
    lines = [f"{r['serial']:12} " + (f"{r['version']} ({r['board']})" if r["reachable"] else f"UNREACHABLE: {r['error']}")
             for r in rows]
    reached = sum(r["reachable"] for r in rows)
    cli._emit(args, rows, "\n".join(lines + [f"{reached} of {len(rows)} meters reached"]))
    return 0 if reached == len(rows) else 1


# --- images ----------------------------------------------------------------------------------------

def cmd_image_approve(args) -> int:
    if not args.keys_dir and not args.keys:
        raise CommandError("approval needs the utility's key: give --keys UTILITY_KEYDIR")
    keys = load_keys(Path(args.keys_dir or args.keys), private=False)
    data = approve_image(parse_image(cli._read_file(args.file)), keys)
    out_path = args.output or args.file
    cli._write_file(out_path, lambda p: write_image(p, data))
    img = parse_image(data)
    out = {"file": out_path, "version": img.manifest["version"], "board": img.manifest["board"],
           "image_id": img.image_id.hex(), "signatures": len(img.signatures)}
    cli._emit(args, out, f"{out_path}: {out['board']} {out['version']} approved by the utility")
    return 0


# --- campaigns -------------------------------------------------------------------------------------

def _images(paths: list[str]) -> dict:
    out = {}
    for path in paths:
        try:
            img = parse_image(cli._read_file(path))
        except ImageError as e:
            raise CommandError(f"{path}: {e}") from None
        board = img.manifest["board"]
        if board in out:
            raise CommandError(f"two images for board {board}: {out[board][0]} and {path}")
        out[board] = (path, img)
    return out


def _policy(args) -> C.Policy:
    return C.Policy(
        waves=tuple(w for w in args.waves.split(",") if w), test_population=not args.no_test_population,
        success_pct=args.success_pct, auto_advance=not args.approve_each_wave,
        error_threshold=None if args.error_threshold == "none" else args.error_threshold,
        min_executed=args.min_executed, max_in_flight=args.max_in_flight, meter_timeout_s=args.meter_timeout,
        retries=C.parse_retries(args.retries or []), windows=tuple(args.window or ()),
        pricing_events=tuple(C.parse_event(e) for e in args.pricing_event or ()), when=args.activate,
        ack=args.ack, delta=args.delta, link_timeout_s=args.timeout, lease_s=args.lease_s)


def cmd_campaign_create(args) -> int:
    keys = _keys(args, needed="a campaign checks its images' signatures")
    images = _images(args.image)
    with _db(args) as store:
        cid = C.create(store, args.name, images, _selection(args), _policy(args), keys,
                       require_approval=False if args.allow_unapproved else None)
        s = C.summary(store, cid)
    cli._emit(args, s, _status_text(s))
    return 0


def cmd_campaign_rollback(args) -> int:
    with _db(args) as store:
        cid = C.create_rollback(store, args.name, args.new_name)
        s = C.summary(store, cid)
    cli._emit(args, s, _status_text(s))
    return 0


def cmd_campaign_run(args) -> int:
    keys = _keys(args, needed="a campaign authenticates to its meters")
    with _db(args) as store:
        runner = C.Runner(store, args.name, keys, worker=args.worker,
                          deltas_dir=Path(args.delta_dir) if args.delta_dir else None)
        with _Live(args, store, runner.cid) as live:
            runner.on_change = live.update
            s = runner.run(wait=not args.no_wait)
        if args.report:
            _write_report(store, s, args.report)
    cli._emit(args, s, _status_text(s))
    return 0 if s["state"] in ("completed", "running", "paused") else 1


def cmd_campaign_status(args) -> int:
    with _db(args) as store:
        if not args.name:
            rows = C.campaigns(store)
            cli._emit(args, rows, "\n".join(f"{r['id']:>4} {r['name']:24} {r['kind']:9} {r['state']}" for r in rows)
                      or "no campaigns")
            return 0
        if args.watch and not args.json:
            cid = C.load(store, args.name)["id"]
            with _Live(args, store, cid, force=True) as live:
                while C.load(store, cid)["state"] in ("running", "paused"):
                    live.update()
                    time.sleep(0.5)
        s = C.summary(store, args.name)
        if args.meters:
            s["meters"] = C.members(store, s["id"])
        if args.report:
            _write_report(store, s, args.report)
    text = _status_text(s)
    if args.meters:
        text += "\n" + "\n".join(f"  {m['serial']:12} wave {m['wave']} {m['state']:11} {m['stage'] or '':24} "
                                 f"{m['reason'] or ''}" for m in s["meters"])
    cli._emit(args, s, text)
    return 0


def cmd_campaign_control(args) -> int:
    with _db(args) as store:
        s = C.set_state(store, args.name, args.action)
    cli._emit(args, s, _status_text(s))
    return 0


def _status_text(s: dict) -> str:
    lines = [f"campaign {s['name']} ({s['kind']}): {s['state']}" + (f" - {s['reason']}" if s.get("reason") else "")]
    shown = ("confirmed", "warned", "reverted", "rejected", "failed", "timeout", "link", "error", "skipped",
             "in_progress", "pending")
    lines.append(f"  {'wave':18} {'state':18} {'size':>5} " + " ".join(f"{k[:9]:>9}" for k in shown))
    for w in s["waves"]:
        lines.append(f"  {w['name']:18} {w['state']:18} {w['size']:>5} "
                     + " ".join(f"{w['results'].get(k, 0):>9}" for k in shown))
    for r in s.get("failure_reasons", []):
        lines.append(f"  {r['count']:>4} x {r['reason']}: {', '.join(r['meters'][:8])}"
                     + (" ..." if len(r["meters"]) > 8 else ""))
    return "\n".join(lines)


class _Live:
    """A live progress display of a campaign's waves on a terminal (rich); silent otherwise."""

    def __init__(self, args, store: Store, cid: int, force: bool = False):
        self._on = (force or sys.stderr.isatty()) and not args.json and sys.stderr.isatty()
        self.store, self.cid, self._last = store, cid, 0.0

    def __enter__(self):
        if self._on:
            from rich.live import Live
            self._live = Live(self._render(), refresh_per_second=4, transient=True)
            self._live.start()
        return self

    def _render(self):
        from rich.table import Table
        s = C.summary(self.store, self.cid)
        t = Table(title=f"campaign {s['name']}: {s['state']}")
        for col in ("wave", "state", "size", "done", "confirmed", "failed", "in flight", "pending"):
            t.add_column(col)
        for w in s["waves"]:
            r = w["results"]
            failed = sum(r.get(k, 0) for k in C.FAILURE_KINDS)
            done = sum(r.get(k, 0) for k in C.FINAL)
            t.add_row(w["name"], w["state"], str(w["size"]), f"{done}/{w['size']}",
                      str(r["confirmed"] + r["warned"]), str(failed), str(r["in_progress"]), str(r["pending"]))
        return t

    def update(self) -> None:
        if self._on and time.monotonic() - self._last > 0.25:
            self._last = time.monotonic()
            self._live.update(self._render())

    def __exit__(self, *exc):
        if self._on:
            self._live.stop()


# --- the MDMS ---------------------------------------------------------------------------------------

def cmd_mdms_read(args) -> int:
    """A scheduled read: once, or every --every seconds --count times."""
    rounds = []
    with _db(args) as store:
        for n in range(args.count):
            if n:
                time.sleep(args.every)
            with cli._progress(args, "read") as ui:
                rounds.append(mdms.read_fleet(store, _selection(args), timeout_s=args.timeout, progress=ui.progress))
    last = rounds[-1]
    lines = [f"{r['serial']:12} " + (f"ERROR: {r['error']}" if "error" in r else
                                     f"{r['intervals']} intervals, {r['events']} events, {r['alarms']} alarms")
             for r in last]
    cli._emit(args, last if args.count == 1 else rounds, "\n".join(lines))
    return 0 if all("error" not in r for r in last) else 1


def cmd_mdms_vee(args) -> int:
    with _db(args) as store:
        out = mdms.run_vee(store, _selection(args), follow_up=not args.no_follow_up, timeout_s=args.timeout)
    lines = [f"{m['serial']:12} {m['intervals']} intervals, {m['findings']} findings, {m['re_read']} re-read, "
             f"{m['estimated']} estimated, {m['left_missing']} left missing"
             + (f" (re-read failed: {m['re_read_error']})" if m["re_read_error"] else "") for m in out["meters"]]
    lines += [f"  {r['meter']:12} {r['start']:>11} {r['rule']:16} {r['action']:28} {r['detail']}"
              for r in out["exceptions"]]
    cli._emit(args, out, "\n".join(lines + [f"VEE run {out['run_id']}: {len(out['exceptions'])} exceptions"]))
    return 0


def cmd_mdms_reconcile(args) -> int:
    with _db(args) as store:
        out = mdms.reconcile_campaign(store, C.load(store, args.name)["id"])
    lines = [f"wave {w['wave']}: {w['intact']} of {w['meters']} meters' billing data intact" for w in out["waves"]]
    lines += [f"  {m['serial']:12} {'intact' if m['intact'] else 'PROBLEMS: ' + '; '.join(m['problems'])}"
              for m in out["meters"]]
    cli._emit(args, out, "\n".join(lines))
    return 0 if out["intact"] else 1


def cmd_mdms_audit(args) -> int:
    with _db(args) as store:
        rows = mdms.audit(store, args.meter_serial)
    cli._emit(args, rows, "\n".join(f"{r['serial']:12} {r['start']:>11} {r['rule']:14} {r['method']:16} "
                                    f"original {r['original'] and r['original'].get('energy_mwh')} mWh -> "
                                    f"estimate {r['estimate_mwh']} mWh" for r in rows) or "no edits")
    return 0


# --- reports ---------------------------------------------------------------------------------------

_AS_FAILED = {"timeout": "failed", "link": "failed", "error": "failed", "warned": "confirmed"}


def _page_reason(m: dict) -> str | None:
    """The page's reason: a failure kind the page folds into `failed` keeps its name in front."""
    if m["state"] in ("timeout", "link", "error"):
        return f"{m['state']}: {m['reason'] or ''}"
    return m["reason"]


def campaign_page(store: Store, s: dict) -> dict:
    """The campaign as html_report.render_campaign takes it: each meter with its intervals
    around its switch, and its reconciliation."""
    rec = {r["serial"]: r for r in mdms.reconcile_campaign(store, s["id"])["meters"]}
    meters = []
    for m in C.members(store, s["id"]):
        recs = mdms.intervals(store, m["serial"])
        meters.append({"serial": m["serial"], "wave": m["wave"], "result": _AS_FAILED.get(m["state"], m["state"]),
                       "reason": _page_reason(m),
                       "warnings": m["warnings"], "from_version": m["from_version"], "to_version": m["to_version"],
                       "switch_s": m["switch_s"], "intervals": recs, "reconciliation": rec.get(m["serial"])})
    image = next(iter(s["images"].values()), {})
    waves = [{"index": w["idx"], "name": w["name"], "state": w["state"], "meters": w["size"],
              "results": {"confirmed": w["results"]["confirmed"] + w["results"]["warned"],
                          "reverted": w["results"]["reverted"], "rejected": w["results"]["rejected"],
                          "failed": sum(w["results"][k] for k in ("failed", "timeout", "link", "error")),
                          "in_progress": w["results"]["in_progress"], "pending": w["results"]["pending"],
                          "warned": w["results"]["warned"]}} for w in s["waves"]]
    return {"name": s["name"], "id": s["id"], "state": s["state"], "image": image, "created_s": s["created_s"],
            "updated_s": s["updated_s"], "waves": waves, "meters": meters}


def _write_report(store: Store, s: dict, path: str) -> None:
    html_report.write(path, html_report.render_campaign(campaign_page(store, s)))


# --- HAN enrollment ---------------------------------------------------------------------------------

def _actor(args) -> str:
    return args.by or os.environ.get("USER") or "operator"


def _connect(args, store: Store) -> E.Connect:
    """Sessions with fleet meters; the utility's key is checked before anything is stored."""
    keys = _keys(args, needed="the meter authenticates the registry's HAN commands")
    return E.connector(store, keys.utility_secret, args.timeout)


class _Wait:
    """A live line on stderr while the meter's join window is open (a terminal, --json off)."""

    def __init__(self, args):
        self._on = sys.stderr.isatty() and not args.json
        self.say = None

    def __enter__(self):
        if self._on:
            from rich.console import Console
            self._status = Console(stderr=True).status("")
            self._status.start()
            self.say = self._status.update
        return self

    def __exit__(self, *exc):
        if self._on:
            self._status.stop()


def _enrollment_line(e: dict) -> str:
    return (f"{e['id']:>5} {e['eui64']} {e['kind']:12} {e['tech']:9} {e['meter']:12} {e['customer_id']:10} "
            f"{e['program']:18} {e['state']:15} {e['message'] or ''}").rstrip()


def cmd_han_enroll(args) -> int:
    E.identities(args.eui64, args.install_code)  # a mistyped code is said first, whatever else is missing
    with _db(args) as store:
        connect = _connect(args, store)
        with _Wait(args) as ui:
            e = E.enroll(store, connect, meter=args.meter, eui64=args.eui64, install_code=args.install_code,
                         kind=args.kind, tech=args.tech, customer=args.customer, premises=args.premises,
                         program=args.program, consent=args.consent, customer_name=args.customer_name,
                         contact=args.contact, address=args.address, actor=_actor(args), window_s=args.window_s,
                         progress=ui.say)
        e["notifications"] = E.notifications(store, eui64=e["eui64"])[-1:]
    told = e["notifications"][0]
    cli._emit(args, e, f"{e['eui64']}: {e['state']} on meter {e['meter']} in "
                       f"{e['notified_s'] - e['requested_s']:.1f} s; the customer was told ({told['channel']}): "
                       f"{told['message']}")
    return 0 if e["state"] == "enrolled" else 1


def cmd_han_unenroll(args) -> int:
    if bool(args.eui64) == args.pending:
        raise CommandError("give --eui64 EUI64, or --pending to finish every removal still pending")
    with _db(args) as store:
        connect = _connect(args, store)
        done = (E.complete_pending(store, _actor(args), connect) if args.pending
                else [E.unenroll(store, args.eui64, _actor(args), connect)])
    lines = [f"{e['eui64']}: " + ("removed; its key is erased on meter " + e["meter"] if e["state"] == "removed"
                                  else f"REMOVAL PENDING ({e['error']}): run `meterfw han unenroll --pending` again")
             for e in done]
    cli._emit(args, done if args.pending else done[0], "\n".join(lines) or "no removal pending")
    return 0 if all(e["state"] == "removed" for e in done) else 1


def cmd_han_swap(args) -> int:
    with _db(args) as store:
        connect = _connect(args, store)
        with _Wait(args) as ui:
            out = E.swap(store, connect, args.old_meter, args.new_meter, _actor(args),
                         old_retired=args.old_meter_retired, window_s=args.window_s, progress=ui.say)
    lines = [f"meter {out['old_meter']} -> {out['new_meter']}"
             + (" (old meter retired: keys left on it, recorded in the audit)" if out["old_meter_retired"] else "")]
    lines += [_enrollment_line(e) for e in out["enrollments"]]
    lines += [f"{eui}: REMOVAL PENDING on the old meter; not moved" for eui in out["removal_pending"]]
    cli._emit(args, out, "\n".join(lines))
    return 0 if all(e["state"] == "enrolled" for e in out["enrollments"]) and not out["removal_pending"] else 1


def cmd_han_consent(args) -> int:
    with _db(args) as store:
        if args.action == "list":
            rows = E.consents(store, args.customer)
            cli._emit(args, rows, "\n".join(
                f"{r['id']:>5} {r['customer_id']:10} {r['eui64'] or '*':16} {r['program'] or '*':18} "
                + (f"REVOKED by {r['revoked_by']}" if r["revoked_s"] else f"granted by {r['granted_by']}: {r['evidence']}")
                for r in rows) or "no consent on record")
            return 0
        if not args.customer:
            raise CommandError(f"consent {args.action} needs --customer ID")
        if args.action == "grant":
            out = E.grant(store, args.customer, args.eui64, args.program, args.consent, _actor(args))
            cli._emit(args, out, f"consent {out['id']} recorded for customer {out['customer']}")
            return 0
        out = E.revoke(store, args.customer, args.eui64, args.program, _actor(args), _connect(args, store))
    lines = [f"consent revoked ({len(out['revoked'])} records)"]
    lines += [f"{e['eui64']}: " + ("unenrolled; its key is erased on meter " + e["meter"] if e["state"] == "removed"
                                   else "REMOVAL PENDING: run `meterfw han unenroll --pending` again")
              for e in out["unenrolled"]]
    cli._emit(args, out, "\n".join(lines))
    return 0 if all(e["state"] == "removed" for e in out["unenrolled"]) else 1


def cmd_han_areas(args) -> int:
    with _db(args) as store:
        if args.set is not None:
            E.set_area(store, args.set, args.tech or [], _actor(args))
        elif args.tech:
            raise CommandError("--tech goes with --set AREA")
        out = E.areas(store)
    cli._emit(args, out, "\n".join(f"{a:12} {', '.join(t) or '(none)'}" for a, t in out.items())
              or "no area allows any HAN technology yet: `meterfw han areas --set AREA --tech zigbee-se`")
    return 0


def cmd_han_enrollments(args) -> int:
    with _db(args) as store:
        rows = E.enrollments(store, meter=args.meter, customer=args.customer,
                             eui64=args.eui64 and E._eui(args.eui64), states=tuple(args.state or ()))
    cli._emit(args, rows, "\n".join(_enrollment_line(e) for e in rows) or "no enrollments")
    return 0


def cmd_han_notifications(args) -> int:
    with _db(args) as store:
        rows = E.notifications(store, customer=args.customer, eui64=args.eui64 and E._eui(args.eui64))
    cli._emit(args, rows, "\n".join(f"{cli._iso(n['time_s'])} {n['customer_id']:10} {n['eui64']} {n['channel']:13} "
                                    f"{n['outcome']:7} {n['message']}" for n in rows) or "no notifications")
    return 0


def cmd_han_audit(args) -> int:
    with _db(args) as store:
        rows = E.audit_trail(store)
    cli._emit(args, rows, "\n".join(f"{cli._iso(r['time_s'])} {r['actor']:10} {r['action']:18} {r['eui64'] or '':16} "
                                    f"{r['meter'] or '':12} {r['detail']}" for r in rows) or "no audit records")
    return 0


# --- the table ---------------------------------------------------------------------------------------

def _db_arg(c) -> None:
    c.add_argument("--db", default=os.environ.get("METERFW_DB", "meterfw.db"),
                   help="the back office's database: a file (SQLite) or a postgresql:// URL "
                        "(default $METERFW_DB or %(default)s)")


def _filters(c) -> None:
    c.add_argument("--board", action="append", help="only meters of this board (repeatable)")
    c.add_argument("--version", action="append", help="only meters running this version (repeatable)")
    c.add_argument("--area", action="append", help="only meters in this service area (repeatable)")
    c.add_argument("--tag", action="append", help="only meters carrying this tag (repeatable: all of them)")
    c.add_argument("--meter", action="append", metavar="SERIAL", help="only this meter (repeatable)")


def add_commands(sub, command) -> None:
    fl = sub.add_parser("fleet", help="the fleet inventory").add_subparsers(dest="what", required=True)
    c = command("import", cmd_fleet_import, "add or update meters from a CSV file "
                "(serial,board,url,area,tags,test_population)", fl)
    c.add_argument("file")
    _db_arg(c)
    c = command("list", cmd_fleet_list, "the meters of the inventory", fl)
    _db_arg(c)
    _filters(c)
    c = command("discover", cmd_fleet_discover, "read each meter's status over its link", fl)
    _db_arg(c)
    _filters(c)

    camp = sub.add_parser("campaign", help="fleet upgrade campaigns").add_subparsers(dest="what", required=True)
    c = command("create", cmd_campaign_create, "a campaign: images, the meters it targets, its waves and controls", camp)
    c.add_argument("name")
    c.add_argument("--image", action="append", required=True, help="a signed, approved image (one per board)")
    c.add_argument("--keys", dest="keys_dir", help="the utility's key directory (its vendor.pub checks the vendor)")
    _db_arg(c)
    _filters(c)
    c.add_argument("--waves", default="10%,50%,100%",
                   help="wave sizes after the test population: counts or percentages of the meters left; the last "
                        "takes the rest (default %(default)s)")
    c.add_argument("--no-test-population", action="store_true", help="no test-population wave first")
    c.add_argument("--success-pct", type=float, default=95.0, help="share of a wave that must confirm (default 95)")
    c.add_argument("--approve-each-wave", action="store_true", help="each next wave waits for `campaign approve`")
    c.add_argument("--error-threshold", default="10%", help="abort at this many failures: a count or a percentage "
                   "of the meters run, or `none` (default %(default)s)")
    c.add_argument("--min-executed", type=int, default=5, help="meters run before the error threshold can trip")
    c.add_argument("--max-in-flight", type=int, default=8, help="meters upgraded at once per worker")
    c.add_argument("--meter-timeout", type=float, default=900.0, help="seconds a meter may take (default 900)")
    c.add_argument("--retries", action="append", metavar="KIND=N",
                   help=f"retries per failure kind ({', '.join(C.FAILURE_KINDS)}); "
                        f"default {','.join(f'{k}={v}' for k, v in C.DEFAULT_RETRIES.items())}")
    c.add_argument("--window", action="append", help="maintenance window: HH:MM-HH:MM (UTC, daily) or START/END; "
                   "no activation outside one (repeatable)")
    c.add_argument("--pricing-event", action="append", metavar="START/END",
                   help="a scheduled pricing event: no activation inside it (repeatable)")
    c.add_argument("--activate", choices=("boundary", "now"), default="boundary")
    c.add_argument("--ack", choices=("immediate", "next-read"), default="next-read",
                   help="how the meters report a new image's failures: with the next scheduled read (default, for "
                        "mass upgrades) or at once")
    c.add_argument("--delta", choices=("auto", "never", "only"), default="auto")
    c.add_argument("--lease-s", type=float, default=30.0, help="a worker silent this long is taken as gone")
    c.add_argument("--allow-unapproved", action="store_true",
                   help="lab only: accept sim-board images without the utility's approval")
    c = command("run", cmd_campaign_run, "work a campaign: upgrade its meters, wave by wave", camp)
    c.add_argument("name")
    _db_arg(c)
    c.add_argument("--keys", dest="keys_dir", help="the utility's key directory (the meters' keys derive from it)")
    c.add_argument("--worker", help="this worker's name (default host:pid:random)")
    c.add_argument("--no-wait", action="store_true", help="return when what is left waits for a window or a retry")
    c.add_argument("--delta-dir", help="deltas (*.mfd) to send where they cost less")
    c.add_argument("--report", help="write the campaign's HTML report here at the end")
    c = command("status", cmd_campaign_status, "a campaign's progress per wave and per result (all campaigns "
                "without NAME)", camp)
    c.add_argument("name", nargs="?")
    _db_arg(c)
    c.add_argument("--watch", action="store_true", help="a live display until the campaign ends")
    c.add_argument("--meters", action="store_true", help="list each meter")
    c.add_argument("--report", help="write the campaign's HTML report here")
    for action, what in (("pause", "no new meter starts until resume"), ("resume", "go on after a pause"),
                         ("abort", "no new meter starts; meters not switched yet keep what they run"),
                         ("approve", "let the wave that waits for approval start")):
        c = command(action, cmd_campaign_control, what, camp)
        c.add_argument("name")
        c.set_defaults(action=action)
        _db_arg(c)
    c = command("rollback", cmd_campaign_rollback, "a campaign that reverts every meter this one confirmed, "
                "in its waves, with its controls (then `campaign run` it)", camp)
    c.add_argument("name")
    c.add_argument("--name", dest="new_name", help="the rollback campaign's name (default NAME-rollback)")
    _db_arg(c)
    add_mdms_commands(sub, command)


def add_mdms_commands(sub, command) -> None:
    md = sub.add_parser("mdms", help="meter data: scheduled reads, VEE, reconciliation").add_subparsers(
        dest="what", required=True)
    c = command("read", cmd_mdms_read, "read intervals, registers, events and alarms into the database", md)
    _db_arg(c)
    _filters(c)
    c.add_argument("--every", type=float, default=3600.0, help="seconds between reads with --count (default 3600)")
    c.add_argument("--count", type=int, default=1, help="how many reads (default 1)")
    c = command("vee", cmd_mdms_vee, "validate, read again what is missing or corrupt, estimate; the exception "
                "report", md)
    _db_arg(c)
    _filters(c)
    c.add_argument("--no-follow-up", action="store_true", help="estimate without reading the meters again")
    c = command("reconcile", cmd_mdms_reconcile, "did each meter's billing data come through a campaign intact", md)
    c.add_argument("name", help="the campaign")
    _db_arg(c)
    c = command("audit", cmd_mdms_audit, "every VEE edit: original, rule, estimate, method", md)
    c.add_argument("--meter", dest="meter_serial", metavar="SERIAL")
    _db_arg(c)


def add_image_commands(image, command) -> None:
    c = command("approve", cmd_image_approve, "add the utility's approval signature to a vendor-signed image", image)
    c.add_argument("file")
    c.add_argument("--keys", dest="keys_dir", help="the utility's key directory")
    c.add_argument("-o", "--output", help="write the approved image here (default: in place)")



def add_han_commands(han, command) -> None:
    """The registry's side of `meterfw han` (the back office's database and the fleet's links)."""
    def office(name, fn, help, keys=False):
        c = command(name, fn, help, han)
        _db_arg(c)
        c.add_argument("--by", help="who does this, for the audit trail (default $USER)")
        if keys:
            c.add_argument("--keys", dest="keys_dir", help="the utility's key directory (the meters' keys derive from it)")
        return c

    c = office("enroll", cmd_han_enroll, "enroll a customer's device: checked (ID and install code, consent, the "
               "area's technologies, the device enrolled nowhere else), pushed to the meter, joined and tested there, "
               "the customer notified of the outcome (exit 1 when it failed)", keys=True)
    c.add_argument("--meter", required=True, metavar="SERIAL", help="the fleet meter serving the premises")
    c.add_argument("--eui64", required=True, help="the device's EUI-64 (16 hex digits)")
    c.add_argument("--install-code", required=True, help="its install code with the CRC-16, hex as labelled")
    c.add_argument("--kind", required=True, choices=("thermostat", "display", "load-control", "ev-charger"))
    c.add_argument("--tech", default="zigbee-se", help="its technology (default %(default)s)")
    c.add_argument("--customer", required=True, metavar="ID", help="the customer (added when new)")
    c.add_argument("--customer-name", default="", help="a new customer's name")
    c.add_argument("--contact", default="", help="how the customer is told: an e-mail address, a phone number, a postal "
                   "address")
    c.add_argument("--premises", required=True, metavar="ID", help="the premises (added when new, on --meter)")
    c.add_argument("--address", default="", help="a new premises' address")
    c.add_argument("--program", required=True, help="e.g. demand-response, in-home-display")
    c.add_argument("--consent", help="the customer's consent (BR5): yes, a file (its SHA-256 is kept) or a reference; "
                   "without it a consent on record must cover the device")
    c.add_argument("--window-s", type=int, default=E.DEFAULT_WINDOW_S, help="the join window (1-254 s, default "
                   "%(default)s)")
    c = office("unenroll", cmd_han_unenroll, "remove a device: its key erased on the meter, then the enrollment "
               "removed; an unreachable meter leaves it removal_pending (exit 1) for --pending to finish", keys=True)
    c.add_argument("--eui64")
    c.add_argument("--pending", action="store_true", help="finish every removal still pending")
    c = office("swap", cmd_han_swap, "meter swap: each device removed from the old meter and enrolled on the new one, "
               "its customer told", keys=True)
    c.add_argument("--old-meter", required=True, metavar="SERIAL")
    c.add_argument("--new-meter", required=True, metavar="SERIAL")
    c.add_argument("--old-meter-retired", action="store_true",
                   help="the old meter is out and cannot be reached: swap without erasing its keys (recorded in the "
                        "audit)")
    c.add_argument("--window-s", type=int, default=E.DEFAULT_WINDOW_S)
    c = office("consent", cmd_han_consent, "the customers' consent: list, grant, or revoke (which unenrolls the devices "
               "it covered, their keys erased)", keys=True)
    c.add_argument("action", choices=("list", "grant", "revoke"))
    c.add_argument("--customer", metavar="ID")
    c.add_argument("--eui64", help="one device (default: all of the customer's)")
    c.add_argument("--program", help="one program (default: every program)")
    c.add_argument("--consent", help="grant: yes, a file or a reference")
    c = office("areas", cmd_han_areas, "the HAN technologies valid in each service area (BR6): list, or --set one")
    c.add_argument("--set", metavar="AREA", help="set AREA's technologies to the --tech given (none: no device)")
    c.add_argument("--tech", action="append", help="a technology valid in AREA (repeatable)")
    c = office("enrollments", cmd_han_enrollments, "the registry's enrollments")
    c.add_argument("--meter", metavar="SERIAL")
    c.add_argument("--customer", metavar="ID")
    c.add_argument("--eui64")
    c.add_argument("--state", action="append", choices=("requested", "pushed", "enrolled", "failed",
                                                        "removal_pending", "removed"))
    c = office("notifications", cmd_han_notifications, "the customer notification records")
    c.add_argument("--customer", metavar="ID")
    c.add_argument("--eui64")
    office("audit", cmd_han_audit, "the registry's audit trail")
