"""The back office's HAN enrollment registry (I3 scenario 2: FR19-FR23, NFR2, BR5, BR6): customers,
premises, devices, enrollments, consent, the technologies each service area allows, the customer
notification records and an audit trail, in the campaign manager's database (store.py).

An enrollment is checked whole before anything is stored or sent: the EUI-64 and the install code
(its CRC), the meter in the fleet, the technology allowed in the meter's area (BR6), the device
live nowhere else (NFR3), the customer's consent current (BR5). It is then pushed to the meter over
its fleet link (pinned to its serial, like a campaign's), the meter joins, comm-tests and
self-tests the device with no further human step (FR19-FR21), and the outcome, success or the
meter's exact failure, becomes a customer notification record (FR22, FR23).

A device's key lives on the meter only while its enrollment is: a failed enrollment, an unenroll, a
meter swap and a revoked consent each erase it there (HAN_REMOVE). When the meter cannot be
reached the enrollment is `removal_pending`, never `removed`, until a later run erases the key.

Enrollment states: requested -> pushed -> enrolled | failed; enrolled -> removal_pending -> removed.
"""
from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Callable

from . import fleet
from .errors import CommandError, MeterfwError
from .han import KINDS, HanError, parse_eui64, parse_install_code
from .session import Meter
from .store import Store, dumps, loads

LIVE = ("requested", "pushed", "enrolled", "removal_pending")  # enrollments_live's states
# Beyond the join window: the comm test (3 frames, 1 s each at most), the self-test (2 s) and a
# few jobs queued ahead on the meter's HAN task.
OUTCOME_MARGIN_S = 60.0
DEFAULT_WINDOW_S = 180  # Zigbee's usual permit-join
_TECH = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_NO = {"", "no", "none", "false", "n", "0"}

Connect = Callable[[str], Meter]  # a fleet meter's serial -> a session with it, pinned to its serial


def connector(store: Store, utility_secret: bytes | None, timeout_s: float) -> Connect:
    return lambda serial: fleet.open_meter(fleet.meter(store, serial), timeout_s, utility_secret)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _ident(what: str, text: str) -> str:
    text = (text or "").strip()
    if not text or "\n" in text:
        raise CommandError(f"{what} must be given, on one line")
    return text


# --- audit and notifications ---------------------------------------------------------------------------

def audit(store: Store, actor: str, action: str, detail: str, *, customer: str | None = None,
          eui64: str | None = None, meter: str | None = None) -> None:
    store.x("INSERT INTO han_audit (time_s, actor, action, customer_id, eui64, meter, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), actor, action, customer, eui64, meter, detail))


def channel(contact: str) -> str:
    """How a customer is told: by the contact on record."""
    if "@" in contact:
        return "email"
    if re.fullmatch(r"\+?[0-9 ()-]{6,}", contact or ""):
        return "sms"
    return "post" if contact else "meter display"


def _notify(store: Store, enrollment: dict, ok: bool, message: str) -> dict:
    contact = store.one("SELECT contact FROM customers WHERE id = ?", (enrollment["customer_id"],))[0]
    now = time.time()
    note = {"enrollment_id": enrollment["id"], "time_s": now, "channel": channel(contact),
            "outcome": "success" if ok else "failure", "message": message}
    store.x("INSERT INTO notifications (enrollment_id, time_s, channel, outcome, message) VALUES (?, ?, ?, ?, ?)",
            tuple(note.values()))
    store.x("UPDATE enrollments SET notified_s = ? WHERE id = ?", (now, enrollment["id"]))
    return note


def _device_words(e: dict) -> str:
    return f"{e['kind']} {e['eui64']}"


# --- service areas (BR6) -------------------------------------------------------------------------------

def set_area(store: Store, area: str, techs: list[str], actor: str) -> dict:
    area = _ident("the area", area)
    bad = [t for t in techs if not _TECH.match(t)]
    if bad:
        raise CommandError(f"technology {bad[0]!r} is not a technology's name (lower-case letters, digits, -)")
    with store.tx():
        store.x("DELETE FROM area_techs WHERE area = ?", (area,))
        store.many("INSERT INTO area_techs (area, tech) VALUES (?, ?)", [(area, t) for t in sorted(set(techs))])
        audit(store, actor, "area", f"technologies valid in {area}: {', '.join(sorted(set(techs))) or 'none'}")
    return {"area": area, "techs": sorted(set(techs))}


def areas(store: Store) -> dict:
    out: dict = {}
    for area, tech in store.rows("SELECT area, tech FROM area_techs ORDER BY area, tech"):
        out.setdefault(area, []).append(tech)
    return out


def _check_area(store: Store, m: fleet.FleetMeter, tech: str) -> None:
    allowed = [r[0] for r in store.rows("SELECT tech FROM area_techs WHERE area = ? ORDER BY tech", (m.area,))]
    if tech not in allowed:
        raise CommandError(f"{tech} is not a technology valid in service area {m.area or '(none)'} of meter {m.serial} "
                           f"(valid: {', '.join(allowed) or 'none set; see `meterfw han areas`'}); nothing stored")


# --- consent (BR5) -------------------------------------------------------------------------------------

def evidence(consent: str | None) -> str:
    """--consent as it is recorded: `yes` (the operator took it), a file (its path and SHA-256), or
    a reference; no consent is an error."""
    if consent is None or consent.strip().lower() in _NO:
        raise CommandError("no consent from the customer (BR5): give --consent yes|FILE|REF; nothing stored or sent")
    p = Path(consent)
    if p.is_file():
        return f"file {p.resolve()} sha256 {hashlib.sha256(p.read_bytes()).hexdigest()}"
    return "yes, taken by the operator" if consent.strip().lower() == "yes" else f"ref {consent.strip()}"


_COVERS = ("customer_id = ? AND revoked_s IS NULL AND (eui64 IS NULL OR eui64 = ?) "
           "AND (program IS NULL OR program = ?)")


def consent_current(store: Store, customer: str, eui64: str, program: str) -> bool:
    return store.one(f"SELECT id FROM consents WHERE {_COVERS}", (customer, eui64, program)) is not None


def _require_consent(store: Store, e: dict) -> None:
    if not consent_current(store, e["customer_id"], e["eui64"], e["program"]):
        raise CommandError(f"customer {e['customer_id']} has no current consent for {e['eui64']} in {e['program']} "
                           f"(BR5): nothing sent to the meter")


def grant(store: Store, customer: str, eui64: str | None, program: str | None, consent: str, actor: str) -> dict:
    customer, proof = _ident("the customer", customer), evidence(consent)
    eui64 = _eui(eui64) if eui64 else None
    with store.tx():
        if store.one("SELECT id FROM customers WHERE id = ?", (customer,)) is None:
            raise CommandError(f"no customer {customer} in the registry")
        cid = store.one("INSERT INTO consents (customer_id, eui64, program, evidence, granted_s, granted_by) "
                        "VALUES (?, ?, ?, ?, ?, ?) RETURNING id", (customer, eui64, program, proof, time.time(), actor))[0]
        audit(store, actor, "consent granted", f"{_scope(eui64, program)}: {proof}", customer=customer, eui64=eui64)
    return {"id": cid, "customer": customer, "eui64": eui64, "program": program, "evidence": proof}


def _scope(eui64: str | None, program: str | None) -> str:
    return " in ".join(x for x in (eui64 and f"device {eui64}", program and f"program {program}") if x) or "everything"


_CONSENT_COLS = ("id", "customer_id", "eui64", "program", "evidence", "granted_s", "granted_by", "revoked_s",
                 "revoked_by")


def consents(store: Store, customer: str | None = None) -> list[dict]:
    rows = store.rows(f"SELECT {', '.join(_CONSENT_COLS)} FROM consents"
                      + (" WHERE customer_id = ?" if customer else "") + " ORDER BY id", (customer,) if customer else ())
    return [dict(zip(_CONSENT_COLS, r)) for r in rows]


def revoke(store: Store, customer: str, eui64: str | None, program: str | None, actor: str, connect: Connect) -> dict:
    """Revoke the customer's consent (for one device, one program, or all of it), then unenroll
    every live device it no longer covers: its key erased on the meter."""
    eui64 = _eui(eui64) if eui64 else None
    where = "customer_id = ? AND revoked_s IS NULL" + (" AND eui64 = ?" if eui64 else "") + (" AND program = ?" if program else "")
    params = (customer,) + ((eui64,) if eui64 else ()) + ((program,) if program else ())
    with store.tx():
        ids = [r[0] for r in store.rows(f"SELECT id FROM consents WHERE {where}", params)]
        if not ids:
            raise CommandError(f"customer {customer} has no current consent for {_scope(eui64, program)}; nothing changed")
        store.x(f"UPDATE consents SET revoked_s = ?, revoked_by = ? WHERE {where}", (time.time(), actor) + params)
        audit(store, actor, "consent revoked", _scope(eui64, program), customer=customer, eui64=eui64)
    uncovered = [e for e in enrollments(store, customer=customer, states=("pushed", "enrolled"))
                 if not consent_current(store, customer, e["eui64"], e["program"])]
    removed = [unenroll(store, e["eui64"], actor, connect, why="consent revoked") for e in uncovered]
    return {"customer": customer, "revoked": ids, "unenrolled": removed}


# --- enrollments ---------------------------------------------------------------------------------------

_COLS = ("id", "eui64", "customer_id", "premises_id", "meter", "program", "state", "ok", "outcome", "message",
         "requested_s", "pushed_s", "outcome_s", "notified_s", "ended_s")
_SELECT = (f"SELECT {', '.join('e.' + c for c in _COLS)}, d.kind, d.tech FROM enrollments e "
           "JOIN han_devices d ON d.eui64 = e.eui64")


def _row(r) -> dict:
    e = dict(zip(_COLS + ("kind", "tech"), r))
    e["ok"] = None if e["ok"] is None else bool(e["ok"])
    e["outcome"] = loads(e["outcome"])  # the meter's own record of the join and tests
    return e


def enrollments(store: Store, *, meter: str | None = None, customer: str | None = None,
                eui64: str | None = None, states: tuple = ()) -> list[dict]:
    where, params = [], []
    for col, value in (("e.meter", meter), ("e.customer_id", customer), ("e.eui64", eui64)):
        if value:
            where.append(f"{col} = ?")
            params.append(value)
    if states:
        where.append(f"e.state IN ({', '.join('?' * len(states))})")
        params += list(states)
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY e.id"
    return [_row(r) for r in store.rows(sql, params)]


def enrollment(store: Store, eid: int) -> dict:
    return _row(store.one(_SELECT + " WHERE e.id = ?", (eid,)))


def _live(store: Store, eui64: str) -> dict | None:
    found = enrollments(store, eui64=eui64, states=LIVE)
    return found[0] if found else None


def notifications(store: Store, *, eui64: str | None = None, customer: str | None = None) -> list[dict]:
    sql = ("SELECT n.id, n.enrollment_id, e.eui64, e.customer_id, n.time_s, n.channel, n.outcome, n.message "
           "FROM notifications n JOIN enrollments e ON e.id = n.enrollment_id")
    where, params = [], []
    for col, value in (("e.eui64", eui64), ("e.customer_id", customer)):
        if value:
            where.append(f"{col} = ?")
            params.append(value)
    rows = store.rows(sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY n.id", params)
    return [dict(zip(("id", "enrollment_id", "eui64", "customer_id", "time_s", "channel", "outcome", "message"), r))
            for r in rows]


def audit_trail(store: Store) -> list[dict]:
    cols = ("id", "time_s", "actor", "action", "customer_id", "eui64", "meter", "detail")
    return [dict(zip(cols, r)) for r in store.rows(f"SELECT {', '.join(cols)} FROM han_audit ORDER BY id")]


def _eui(text: str) -> str:
    try:
        return parse_eui64(text)
    except HanError as e:
        raise CommandError(str(e)) from None


def identities(eui64: str, install_code: str) -> tuple[str, bytes]:
    """The EUI-64 and the install code, checked (its CRC too) before anything: the meter's checks,
    said here in one line."""
    try:
        return parse_eui64(eui64), parse_install_code(install_code)
    except HanError as e:
        raise CommandError(f"{e}; nothing stored or sent") from None


def enroll(store: Store, connect: Connect, *, meter: str, eui64: str, install_code: str, kind: str,
           customer: str, premises: str, program: str, consent: str | None = None, tech: str = "zigbee-se",
           customer_name: str = "", contact: str = "", address: str = "", actor: str = "operator",
           window_s: int = DEFAULT_WINDOW_S, progress=None) -> dict:
    """Check the request whole, store it, push it to the meter, wait for the meter's outcome and
    record the customer's notification; the enrollment as it ends. Any check that fails raises
    CommandError with nothing stored or sent. Without `consent`, a current consent on record
    must cover the device (BR5)."""
    eui64, code = identities(eui64, install_code)
    if kind not in KINDS:
        raise CommandError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if not _TECH.match(tech):
        raise CommandError(f"technology {tech!r} is not a technology's name")
    if not 1 <= window_s <= 254:
        raise CommandError(f"the join window is 1 to 254 s, not {window_s}")
    customer, premises, program = (_ident("the customer", customer), _ident("the premises", premises),
                                   _ident("the program", program))
    proof = evidence(consent) if consent is not None else None
    now = time.time()
    with store.tx():
        fm = fleet.meter(store, meter)  # CommandError when it is not in the fleet
        _check_area(store, fm, tech)
        live = _live(store, eui64)
        if live:
            where = "on this meter" if live["meter"] == meter else f"on meter {live['meter']}"
            raise CommandError(f"device {eui64} is enrolled {where} already ({live['state']}, customer "
                               f"{live['customer_id']}): unenroll it first; nothing stored")
        p = store.one("SELECT customer_id, meter FROM premises WHERE id = ?", (premises,))
        if p and p[0] != customer:
            raise CommandError(f"premises {premises} is customer {p[0]}'s, not {customer}'s; nothing stored")
        if p and p[1] != meter:
            raise CommandError(f"premises {premises} is served by meter {p[1]}, not {meter} (a swap moves it: "
                               f"`meterfw han swap`); nothing stored")
        if proof is None and not consent_current(store, customer, eui64, program):
            raise CommandError(f"no consent from customer {customer} for {eui64} in {program} (BR5): give --consent "
                               f"yes|FILE|REF; nothing stored or sent")
        store.x("INSERT INTO customers (id, name, contact, created_s) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (customer, customer_name, contact, now))
        if customer_name or contact:
            store.x("UPDATE customers SET name = CASE WHEN ? = '' THEN name ELSE ? END, "
                    "contact = CASE WHEN ? = '' THEN contact ELSE ? END WHERE id = ?",
                    (customer_name, customer_name, contact, contact, customer))
        if p is None:
            store.x("INSERT INTO premises (id, customer_id, address, meter, area) VALUES (?, ?, ?, ?, ?)",
                    (premises, customer, address, meter, fm.area))
        elif address:
            store.x("UPDATE premises SET address = ? WHERE id = ?", (address, premises))
        store.x("INSERT INTO han_devices (eui64, customer_id, kind, tech, install_code, added_s) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (eui64) DO UPDATE SET customer_id = excluded.customer_id, kind = excluded.kind, "
                "tech = excluded.tech, install_code = excluded.install_code",
                (eui64, customer, kind, tech, install_code.strip(), now))
        if proof is not None:
            store.x("INSERT INTO consents (customer_id, eui64, program, evidence, granted_s, granted_by) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (customer, eui64, program, proof, now, actor))
            audit(store, actor, "consent granted", f"{_scope(eui64, program)}: {proof}", customer=customer, eui64=eui64)
        eid = store.one("INSERT INTO enrollments (eui64, customer_id, premises_id, meter, program, state, requested_s) "
                        "VALUES (?, ?, ?, ?, ?, 'requested', ?) RETURNING id",
                        (eui64, customer, premises, meter, program, now))[0]
        audit(store, actor, "enroll requested", f"{kind} {tech} in {program} at premises {premises}",
              customer=customer, eui64=eui64, meter=meter)
    return _join(store, connect, enrollment(store, eid), code.hex(), window_s, actor, progress)


def _join(store: Store, connect: Connect, e: dict, code_hex: str, window_s: int, actor: str, progress) -> dict:
    """Push a requested enrollment to its meter, wait for the outcome, notify the customer. A
    failed enrollment leaves no key on the meter."""
    say = progress or (lambda text: None)
    _require_consent(store, e)  # the registry never pushes a device without it
    say(f"{e['eui64']}: pushing to meter {e['meter']}")
    meter = None
    try:
        meter = connect(e["meter"])
        meter.han_join(e["eui64"], code_hex, window_s, e["tech"], e["kind"])
        store.x("UPDATE enrollments SET state = 'pushed', pushed_s = ? WHERE id = ?", (time.time(), e["id"]))
        row = meter.han_outcome(e["eui64"], window_s + OUTCOME_MARGIN_S, waiting=lambda left: say(
            f"{e['eui64']}: the meter's join window is open; waiting for the device to join and pass its tests "
            f"({left:.0f} s left)"))
        if row is None:
            ok, message, outcome = False, f"the meter reported no outcome within {window_s + OUTCOME_MARGIN_S:g} s", None
        else:
            outcome = row["outcome"]
            ok, message = bool(outcome["ok"]), outcome["message"]
    except CommandError as e_:  # the meter refused the join: han_unknown_tech names the options
        ok, message, outcome = False, str(e_).removeprefix("meter refused: "), {"refused": e_.code}
    except MeterfwError as e_:
        ok, message, outcome = False, f"the meter could not be reached: {_one_line(e_)}", None
    try:
        state = "enrolled" if ok else _erase_failed(meter, e)
    finally:
        if meter is not None:
            meter.link.close()
    store.x("UPDATE enrollments SET state = ?, ok = ?, outcome = ?, message = ?, outcome_s = ?, ended_s = ? WHERE id = ?",
            (state, int(ok), dumps(outcome), message, time.time(), None if ok or state == "removal_pending" else time.time(),
             e["id"]))
    audit(store, actor, "enrolled" if ok else "enroll failed", message or "joined, comm test and self-test passed",
          customer=e["customer_id"], eui64=e["eui64"], meter=e["meter"])
    address = store.one("SELECT address FROM premises WHERE id = ?", (e["premises_id"],))[0]
    at = f" at {address}" if address else ""
    if ok:
        text = (f"Your {_device_words(e)} is enrolled in {e['program']}{at}: it joined meter {e['meter']} and passed "
                f"its communication test and self-test.")
    else:
        text = f"Your {_device_words(e)} could not be enrolled in {e['program']}{at}: {message}"
    _notify(store, e, ok, text)
    return enrollment(store, e["id"])


def _erased(meter: Meter, eui64: str) -> bool:
    """The device's key erased on the meter (or never there); False when it may live on."""
    try:
        meter.han_remove(eui64)
    except CommandError as err:
        return err.code == "han_not_enrolled"
    except MeterfwError:
        return False
    return True


def _erase_failed(meter: Meter | None, e: dict) -> str:
    """A failed enrollment's key off the meter: `failed`, or `removal_pending` when it stays.
    Never reached, or refused at the join (no driver, no radio), nothing was kept there."""
    return "failed" if meter is None or _erased(meter, e["eui64"]) else "removal_pending"


def unenroll(store: Store, eui64: str, actor: str, connect: Connect, why: str = "unenrolled") -> dict:
    """Erase the device's key on its meter, then mark the enrollment removed; a meter that cannot be
    reached leaves it `removal_pending` (a later run completes it). The customer is told."""
    eui64 = _eui(eui64)
    e = _live(store, eui64)
    if e is None:
        raise CommandError(f"no device {eui64} is enrolled; nothing changed")
    if e["state"] == "requested":
        raise CommandError(f"device {eui64}'s enrollment is still being pushed; nothing changed")
    store.x("UPDATE enrollments SET state = 'removal_pending' WHERE id = ?", (e["id"],))
    try:
        meter = connect(e["meter"])
    except MeterfwError as err:
        return _pending(store, e, actor, f"{why}: meter {e['meter']} not reached: {_one_line(err)}")
    try:
        if not _erased(meter, eui64):
            return _pending(store, e, actor, f"{why}: meter {e['meter']} did not erase the key")
    finally:
        meter.link.close()
    store.x("UPDATE enrollments SET state = 'removed', ended_s = ? WHERE id = ?", (time.time(), e["id"]))
    audit(store, actor, "removed", f"{why}: key erased on meter {e['meter']}", customer=e["customer_id"],
          eui64=eui64, meter=e["meter"])
    _notify(store, e, True, f"Your {_device_words(e)} has been removed from meter {e['meter']} ({why}): the meter "
                            f"no longer holds its key.")
    return enrollment(store, e["id"])


def _pending(store: Store, e: dict, actor: str, why: str) -> dict:
    audit(store, actor, "removal pending", why, customer=e["customer_id"], eui64=e["eui64"], meter=e["meter"])
    return {**enrollment(store, e["id"]), "error": why}


def complete_pending(store: Store, actor: str, connect: Connect) -> list[dict]:
    """Every `removal_pending` enrollment tried again."""
    return [unenroll(store, e["eui64"], actor, connect, why="unenrolled")
            for e in enrollments(store, states=("removal_pending",))]


def swap(store: Store, connect: Connect, old: str, new: str, actor: str, *, old_retired: bool = False,
         window_s: int = DEFAULT_WINDOW_S, progress=None) -> dict:
    """A meter swap: each device enrolled on `old` is removed from it (its key erased) and enrolled
    on `new`, its customer told. Checked whole first (the new meter in the fleet, each device's
    technology valid in its area, each consent current, the old meter reachable or retired)."""
    if old == new:
        raise CommandError("the old and the new meter are the same meter")
    fleet.meter(store, old)
    new_fm = fleet.meter(store, new)
    moving = enrollments(store, meter=old, states=("enrolled",))
    for e in moving:
        _check_area(store, new_fm, e["tech"])
        _require_consent(store, e)
    old_meter = None
    try:
        old_meter = connect(old)
    except MeterfwError as err:
        if not old_retired:
            raise CommandError(f"old meter {old} cannot be reached ({_one_line(err)}): nothing changed; if it has been "
                               f"taken out, give --old-meter-retired (recorded in the audit)") from None
        audit(store, actor, "old meter retired", f"meter {old} not reached ({_one_line(err)}); swapped to {new} with "
              f"the keys of {', '.join(e['eui64'] for e in moving) or 'no device'} left on the retired meter", meter=old)
    moved, left = [], []
    try:
        for e in moving:
            if old_meter is not None and not _erased(old_meter, e["eui64"]):
                store.x("UPDATE enrollments SET state = 'removal_pending' WHERE id = ?", (e["id"],))
                audit(store, actor, "removal pending", f"meter swap: the key not erased on meter {old}; not moved",
                      customer=e["customer_id"], eui64=e["eui64"], meter=old)
                left.append(e["eui64"])
                continue
            store.x("UPDATE enrollments SET state = 'removed', ended_s = ? WHERE id = ?", (time.time(), e["id"]))
            store.x("UPDATE premises SET meter = ?, area = ? WHERE id = ?", (new, new_fm.area, e["premises_id"]))
            audit(store, actor, "swapped out", f"removed from meter {old}"
                  + ("" if old_meter else " (retired: its key not erased there)") + f", to be enrolled on {new}",
                  customer=e["customer_id"], eui64=e["eui64"], meter=old)
            code = store.one("SELECT install_code FROM han_devices WHERE eui64 = ?", (e["eui64"],))[0]
            eid = store.one("INSERT INTO enrollments (eui64, customer_id, premises_id, meter, program, state, requested_s) "
                            "VALUES (?, ?, ?, ?, ?, 'requested', ?) RETURNING id",
                            (e["eui64"], e["customer_id"], e["premises_id"], new, e["program"], time.time()))[0]
            moved.append(_join(store, connect, enrollment(store, eid), parse_install_code(code).hex(), window_s,
                               actor, progress))
    finally:
        if old_meter is not None:
            old_meter.link.close()
    for p in store.rows("SELECT id FROM premises WHERE meter = ?", (old,)):
        store.x("UPDATE premises SET meter = ?, area = ? WHERE id = ?", (new, new_fm.area, p[0]))
    audit(store, actor, "meter swap", f"{old} -> {new}: {len(moved)} devices moved", meter=new)
    return {"old_meter": old, "new_meter": new, "old_meter_retired": old_meter is None, "enrollments": moved,
            "removal_pending": left}
