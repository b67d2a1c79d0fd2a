# The bootloader's two copies (/bl/a, /bl/b) as the platform sees them: installing a verified
# bootloader image into the copy not running (its image's manifest kept beside it), for a trial,
# and the stored update's verdict after the boot that follows. The first stage (/main.py) owns the
# record that chooses between the copies; the platform changes it only through the record's own
# methods. Loaded for an install or a verdict, and forgotten after.
import json
import os
from micropython import const
from bootloader import VERSION, eventlog, update_state
from bootloader.image import payload_sha256, read_header, read_table
from bootloader.bootctl import STAGING, slot_path
from bootloader.protocol import ACTIVATING, ACTIVATED, ACTIVATION_FAILED

_CHUNK = const(1024)
_MANIFEST = "/manifest.json"


def path(copy):
    return "/bl/" + "ab"[copy]


def _remove(p):
    try:
        entries = list(os.ilistdir(p))
    except OSError:
        return
    for e in entries:
        child = p + "/" + e[0]
        if e[1] == 0x4000:
            _remove(child)
        else:
            os.remove(child)
    os.rmdir(p)


def _makedirs(p):
    cut = p.rfind("/")
    if cut > 0:
        _makedirs(p[:cut])
    try:
        os.mkdir(p)
    except OSError:
        pass  # there already


def install(record, attempts):
    """Write the verified bootloader image in staging into the copy not running, check every
    file against the image, and put it on trial. The running copy is not touched: a power cut
    here leaves the record choosing it, and a failed trial falls back to it. Returns the copy."""
    target = 1 - record.active
    d = path(target)
    _remove(d)
    buf = bytearray(_CHUNK)
    with open(slot_path(STAGING), "rb") as f:
        raw, _, _ = read_header(f)
        files, _, _ = read_table(f)
        for name, (off, n) in files.items():
            dest = d + "/" + name
            _makedirs(dest[:dest.rfind("/")])
            f.seek(off)
            with open(dest, "wb") as out:
                left = n
                while left:
                    k = f.readinto(memoryview(buf)[:min(left, _CHUNK)])
                    out.write(memoryview(buf)[:k])
                    left -= k
        for name, (off, n) in files.items():
            with open(d + "/" + name, "rb") as g:
                if payload_sha256(g, 0, n, buf) != payload_sha256(f, off, n, buf):
                    raise ValueError("bootloader copy of %s differs from the image" % name)
    with open(d + _MANIFEST, "wb") as out:  # last: a copy with its manifest is a whole copy
        out.write(raw)
    record.active, record.trial, record.attempts = target, 1, attempts
    record.save()
    os.remove(slot_path(STAGING))  # installed: its flash goes back to meter data and the slots
    return target


def _running(record):
    """(version, security version) of the running copy: its image's, kept beside it at install,
    or this code's own for the copy put there at manufacture, which came in no image."""
    try:
        with open(path(record.active) + _MANIFEST) as f:
            m = json.load(f)
        return str(m["version"]), int(m["security_version"])
    except (OSError, ValueError, KeyError, TypeError):
        return VERSION, 0


def settle(record, events):
    """After a boot: the running copy's version and security version go on the record; a
    bootloader activation either started the new copy (on trial) or fell back to this one. True
    when that changed the stored state."""
    record.version, record.security = _running(record)
    s = update_state.load()
    if s.get("kind") != "bootloader" or s.get("status") not in (ACTIVATING, ACTIVATED) \
            or s.get("result") not in (None, "trial"):
        return False
    version = record.version
    if version == s["version"]:
        s["status"], s["result"] = ACTIVATED, "trial" if record.trial else "confirmed"
    else:
        s["status"], s["result"] = ACTIVATION_FAILED, "reverted"
        s["reason"] = s.get("reason") or "bootloader %s did not come up; bootloader %s runs" % (s["version"], version)
        events.log(eventlog.BOOTLOADER_FELL_BACK, record.active)
    update_state.store(s)
    return True
