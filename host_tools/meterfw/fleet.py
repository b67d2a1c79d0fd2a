"""The fleet inventory: each meter's serial, board, link URL (any pyserial URL), service area,
tags, its image as last seen, and membership of the utility's permanent test population (BR4).
Imported from CSV, selected by filters, refreshed by reading each meter's status."""
from __future__ import annotations

import csv
import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import CommandError, MeterfwError
from .paths import BOARD_NAMES
from .session import Meter
from .store import Store
from .transport import Link

COLUMNS = ("serial", "board", "url", "area", "tags", "test_population")
_TRUE, _FALSE = {"1", "yes", "true", "y"}, {"", "0", "no", "false", "n"}


@dataclass(frozen=True)
class FleetMeter:
    serial: str
    board: str
    url: str
    area: str = ""
    tags: tuple = ()
    test_population: bool = False
    version: str | None = None
    image_id: str | None = None
    seen_s: float | None = None
    last_error: str | None = None

    def as_dict(self) -> dict:
        return {"serial": self.serial, "board": self.board, "url": self.url, "area": self.area,
                "tags": list(self.tags), "test_population": self.test_population, "version": self.version,
                "image_id": self.image_id, "seen_s": self.seen_s, "last_error": self.last_error}


@dataclass(frozen=True)
class Selection:
    """Which meters a campaign targets: every filter given must match."""
    boards: tuple = ()
    versions: tuple = ()
    areas: tuple = ()
    tags: tuple = ()  # a meter must carry all of them
    serials: tuple = field(default=())

    def matches(self, m: FleetMeter) -> bool:
        return ((not self.boards or m.board in self.boards) and (not self.versions or m.version in self.versions)
                and (not self.areas or m.area in self.areas) and set(self.tags) <= set(m.tags)
                and (not self.serials or m.serial in self.serials))

    def as_dict(self) -> dict:
        return {k: list(getattr(self, k)) for k in ("boards", "versions", "areas", "tags", "serials")}

    @classmethod
    def from_dict(cls, d: dict) -> "Selection":
        return cls(**{k: tuple(v) for k, v in d.items()})


def _tags(text: str) -> tuple:
    return tuple(sorted({t for t in text.replace(",", ";").replace(" ", ";").split(";") if t}))


def parse_csv(text: str, source: str = "CSV") -> list[FleetMeter]:
    """Rows of COLUMNS (a header line names them; area, tags and test_population may be absent).
    Any bad row is an error naming its line, and nothing is taken."""
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"serial", "board", "url"} <= set(reader.fieldnames):
        raise CommandError(f"{source}: the header must name serial, board and url (and may name area, tags, "
                           f"test_population)")
    unknown = set(reader.fieldnames) - set(COLUMNS)
    if unknown:
        raise CommandError(f"{source}: unknown column(s) {', '.join(sorted(unknown))}; columns are {', '.join(COLUMNS)}")
    out, seen = [], set()
    for row in reader:
        line = reader.line_num
        v = {k: (row.get(k) or "").strip() for k in COLUMNS}
        if None in row:
            raise CommandError(f"{source} line {line}: more fields than the header names")
        if not v["serial"]:
            raise CommandError(f"{source} line {line}: no serial")
        if v["serial"] in seen:
            raise CommandError(f"{source} line {line}: serial {v['serial']} is listed twice")
        if v["board"] not in BOARD_NAMES:
            raise CommandError(f"{source} line {line}: board {v['board']!r} is not one of {', '.join(BOARD_NAMES)}")
        if not v["url"]:
            raise CommandError(f"{source} line {line}: no url (a serial device or socket://host:port)")
        flag = v["test_population"].lower()
        if flag not in _TRUE | _FALSE:
            raise CommandError(f"{source} line {line}: test_population takes yes or no, not {v['test_population']!r}")
        seen.add(v["serial"])
        out.append(FleetMeter(v["serial"], v["board"], v["url"], v["area"], _tags(v["tags"]), flag in _TRUE))
    return out


def import_meters(store: Store, meters: list[FleetMeter]) -> dict:
    """Add or update meters (what the CSV says replaces what the inventory said; what a meter
    reported of itself is kept). One transaction: all rows or none."""
    with store.tx():
        known = {r[0] for r in store.rows("SELECT serial FROM meters")}
        store.many("INSERT INTO meters (serial, board, url, area, tags, test_population) VALUES (?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (serial) DO UPDATE SET board = excluded.board, url = excluded.url, "
                   "area = excluded.area, tags = excluded.tags, test_population = excluded.test_population",
                   [(m.serial, m.board, m.url, m.area, ",".join(m.tags), int(m.test_population)) for m in meters])
    added = sum(m.serial not in known for m in meters)
    return {"added": added, "updated": len(meters) - added, "meters": len(meters)}


def _row(r) -> FleetMeter:
    return FleetMeter(r[0], r[1], r[2], r[3], tuple(t for t in r[4].split(",") if t), bool(r[5]), r[6], r[7], r[8], r[9])


_SELECT = ("SELECT serial, board, url, area, tags, test_population, version, image_id, seen_s, last_error "
           "FROM meters")


def meters(store: Store, selection: Selection | None = None) -> list[FleetMeter]:
    out = [_row(r) for r in store.rows(_SELECT + " ORDER BY serial")]
    return [m for m in out if selection is None or selection.matches(m)]


def meter(store: Store, serial: str) -> FleetMeter:
    r = store.one(_SELECT + " WHERE serial = ?", (serial,))
    if r is None:
        raise CommandError(f"no meter {serial} in the fleet inventory")
    return _row(r)


def seen(store: Store, serial: str, status: dict | None, error: str | None = None) -> None:
    """Record what a meter said of itself (or that it could not be reached)."""
    if status is None:
        store.x("UPDATE meters SET last_error = ? WHERE serial = ?", (error, serial))
    else:
        store.x("UPDATE meters SET version = ?, image_id = ?, seen_s = ?, last_error = NULL WHERE serial = ?",
                (status.get("active_version"), status.get("active_image_id"), time.time(), serial))


def open_meter(m: FleetMeter, timeout_s: float, utility_secret: bytes | None = None) -> Meter:
    """A session with a fleet meter, pinned to its serial: a link that reaches another meter
    (a swapped cable, a stale inventory) is refused before anything is done on it."""
    return Meter(Link(m.url, timeout_s=timeout_s), utility_secret=utility_secret, expect_serial=m.serial)


def discover(store: Store, selection: Selection | None = None, *, timeout_s: float = 3.0, workers: int = 16,
             progress=None) -> list[dict]:
    """Read the status of each meter's link, in parallel; the inventory keeps what each said."""
    todo = meters(store, selection)

    def one(m: FleetMeter) -> dict:
        meter_ = open_meter(m, timeout_s)
        try:
            st = meter_.status()
            return {"serial": m.serial, "reachable": True, "version": st.get("active_version"),
                    "image_id": st.get("active_image_id"), "board": st.get("board"), "status": st}
        except MeterfwError as e:
            return {"serial": m.serial, "reachable": False, "error": " ".join(str(e).split())}
        finally:
            meter_.link.close()

    out = []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo) or 1))) as pool:
        for i, r in enumerate(pool.map(one, todo), 1):
            seen(store, r["serial"], r.get("status"), r.get("error"))
            r.pop("status", None)
            out.append(r)
            if progress:
                progress(i, len(todo))
    return out
