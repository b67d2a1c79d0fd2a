# Admission of an image into the inactive slot: the checks of an initiate's image head (board,
# bootloader version, security floor, rejected or already running, and the Ed25519 signatures
# over the manifest). The signatures cover the manifest alone, so they are checked before the
# slot is touched: an unsigned or unapproved image costs no download and keeps the revert target.
# Loaded for an initiate and forgotten after. The application runs it before it loads its update
# machinery, so the signature check (the most the meter ever loads at once) shares the heap only
# with the meter's resident code.
import asyncio
import io
import hashlib
import time
from bootloader import eventlog, image, slots
from bootloader.api import VERSION as API
from bootloader.protocol import CommandError

# A signature covers its role's prefix and the image id (the manifest's SHA-256): one SHA-512
# block for Ed25519's hash, where the manifest itself is several (host_tools' image.py).
_PREFIX = {1: b"mfw-vendor-id\x00", 2: b"mfw-utility-id\x00"}
_ROLE_NAME = {1: "vendor", 2: "utility"}


async def admit(p, head):
    """The manifest of an initiate's image head (manifest, signatures and nothing else) if the
    meter `p` (its Platform) takes the image: (manifest, image id, head length, signature ms).
    Raises CommandError saying why not."""
    m_raw, sigs, off = image.read_header(io.BytesIO(head))
    if off != len(head):
        raise CommandError("bad_request", "initiate carries the image head only (%d bytes)" % off)
    try:
        m = image.parse_manifest(m_raw)
    except ValueError as e:
        raise CommandError("bad_image", str(e))
    img_id = hashlib.sha256(m_raw).digest()
    if m["board"] != p.board.name:
        raise CommandError("wrong_board", "image is for board %s, this meter is %s" % (m["board"], p.board.name))
    if m["kind"] == "bootloader":
        _bootloader(p, m)
    else:
        _firmware(p, m, img_id)
    await asyncio.sleep_ms(0)  # the checks above take tens of ms on a Pico
    t0_ms = time.ticks_ms()
    try:
        await check_signatures(img_id, sigs, p.board.defaults.get("require_approval", False))
    except ValueError as e:
        p.events.log(eventlog.FW_VERIFY_FAILED, p.inactive_slot)
        raise CommandError("verify_failed", "verification failed: %s" % e)
    return m, img_id, off, time.ticks_diff(time.ticks_ms(), t0_ms)


def _firmware(p, m, img_id):
    if p.record.trial:
        raise CommandError("on_trial", "bootloader %s is on trial: wait for its verdict first" % p.record.version)
    if image.version_tuple(m["min_bootloader"]) > image.version_tuple(p.record.version):
        raise CommandError("bootloader_too_old", "image needs bootloader %s, meter has %s" % (m["min_bootloader"], p.record.version))
    if m["api"] > API:
        raise CommandError("platform_too_old", "image needs platform API %d, this bootloader provides %d" % (m["api"], API))
    if image.below_floor(m, p.bcb.floor):
        raise CommandError("rollback", "security version %d is below the meter's floor %d" % (m["security_version"], p.bcb.floor))
    if img_id in p.bcb.rejected:
        raise CommandError("rejected", "image %s was rejected before" % m["version"])
    if img_id == p.image_id:
        raise CommandError("already_active", "version %s is already running" % m["version"])


def _bootloader(p, m):
    """A bootloader image: newer than the running bootloader, not below its security floor,
    and providing the platform API the meter's image needs (else that image could not boot)."""
    r = p.record
    if r.trial or p.in_trial:
        raise CommandError("on_trial", "a bootloader or an image is on trial: wait for its verdict first")
    if image.below_floor(m, r.floor):
        raise CommandError("rollback", "bootloader security version %d is below the meter's floor %d" % (m["security_version"], r.floor))
    mine, theirs = image.version_tuple(r.version), image.version_tuple(m["version"])
    if theirs == mine:
        raise CommandError("already_active", "bootloader %s is already running" % m["version"])
    if theirs < mine:
        raise CommandError("downgrade", "bootloader %s is older than the running %s" % (m["version"], r.version))
    app, _ = slots.manifest(p.slot)
    if app is not None and app["api"] > m["api"]:
        raise CommandError("platform_too_old", "bootloader %s provides platform API %d, the meter's image needs %d"
                           % (m["version"], m["api"], app["api"]))


def _public_key(role):
    try:
        with open("/keys/%s.pub" % _ROLE_NAME[role], "rb") as f:
            return f.read()
    except OSError:
        return None


async def check_signatures(img_id, sigs, require_approval):
    """Ed25519 checks of a manifest (by its image id) against the meter's public keys (vendor, and the utility's
    approval when required). Raises ValueError naming the first failure."""
    # Loaded for the check and forgotten after: ~16 KB of heap at its peak.
    from bootloader import ed25519, forget

    await asyncio.sleep_ms(0)
    try:
        found = {}
        for role, key_id, sig in sigs:
            if role not in _PREFIX:
                continue
            pub = _public_key(role)
            if pub is None or hashlib.sha256(pub).digest()[:8] != key_id:
                if role == 1:
                    raise ValueError("vendor signature is by an unknown key")
                continue
            if not await ed25519.verify(pub, _PREFIX[role] + img_id, sig):
                raise ValueError("bad %s signature" % _ROLE_NAME[role])
            found[role] = True
    finally:
        del ed25519
        forget("ed25519")
    if 1 not in found:
        raise ValueError("no vendor signature")
    if require_approval and 2 not in found:
        raise ValueError("no valid utility approval, and this meter requires one")
