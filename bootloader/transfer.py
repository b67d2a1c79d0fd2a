# Image transfer into the inactive slot, in the states of DLMS/COSEM image transfer (class 18):
# initiate -> blocks -> verify. Shared by the application's update agent and the recovery
# console, so a meter whose application is broken downloads images the same way.
# Progress lives in the slot file's length (whole blocks, each synced), so a transfer resumes
# from the first block not yet transferred after a dropped link or a power cut.
import hashlib
import io
import json
import os
import struct
from micropython import const
from bootloader import VERSION, eventlog, image, slots
from bootloader.bootctl import slot_path
from bootloader.protocol import CommandError

_STATE = "/data/update.json"
BLOCK_SIZE = const(1024)

NOT_INITIATED = const(0)
INITIATED = const(1)
VERIFYING = const(2)
VERIFIED = const(3)
VERIFY_FAILED = const(4)
ACTIVATING = const(5)
ACTIVATED = const(6)
ACTIVATION_FAILED = const(7)


def _vtuple(v):
    return tuple(int(x) for x in v.split("."))


class Transfer:
    def __init__(self, platform):
        self._p = platform
        self._file = None
        self.state = {"status": NOT_INITIATED}
        try:
            with open(_STATE) as f:
                self.state = json.load(f)
        except (OSError, ValueError):
            pass

    def save(self):
        with open(_STATE, "w") as f:
            json.dump(self.state, f)

    def _written(self):
        try:
            return os.stat(slot_path(self.state["slot"]))[6]
        except OSError:
            return 0

    def public_state(self):
        s = self.state
        out = {"status": s["status"], "version": s.get("version"), "image_id": s.get("id"),
               "result": s.get("result"), "reason": s.get("reason")}
        if s["status"] == INITIATED:
            out["size"] = s["size"]
            out["block_size"] = BLOCK_SIZE
            out["first_not_transferred_block"] = self._written() // BLOCK_SIZE
        return out

    def _close(self):
        if self._file:
            self._file.close()
            self._file = None

    async def initiate(self, head):
        m_raw, _, off = image.read_header(io.BytesIO(head))
        if off != len(head):
            raise CommandError("bad_request", "initiate carries the image head only (%d bytes)" % off)
        m = json.loads(m_raw)
        img_id = hashlib.sha256(m_raw).digest()
        p = self._p
        if m["board"] != p.board.name:
            raise CommandError("wrong_board", "image is for board %s, this meter is %s" % (m["board"], p.board.name))
        if _vtuple(m["min_bootloader"]) > _vtuple(VERSION):
            raise CommandError("bootloader_too_old", "image needs bootloader %s, meter has %s" % (m["min_bootloader"], VERSION))
        if m["security_version"] < p.bcb.floor:
            raise CommandError("rollback", "security version %d is below the meter's floor %d" % (m["security_version"], p.bcb.floor))
        if p.is_rejected(img_id):
            raise CommandError("rejected", "image %s was rejected before" % m["version"])
        if img_id == p.image_id:
            raise CommandError("already_active", "version %s is already running" % m["version"])
        size = off + m["payload_size"]
        slot = p.inactive_slot
        st = os.statvfs("/")
        old = self._slot_size(slot)
        free = st[0] * st[3] + old - 8 * st[0]  # keep a few blocks for littlefs metadata and meter data
        if size > free:
            raise CommandError("no_space", "image needs %d bytes, %d free" % (size, free))
        p.begin_download(slot)
        self._close()
        open(slot_path(slot), "wb").close()
        self.state = {"status": INITIATED, "slot": slot, "size": size, "id": img_id.hex(),
                      "version": m["version"], "result": None, "reason": None}
        self.save()
        p.events.log(eventlog.DOWNLOAD_STARTED, size)
        return {"block_size": BLOCK_SIZE, "first_not_transferred_block": 0,
                "blocks": (size + BLOCK_SIZE - 1) // BLOCK_SIZE}

    @staticmethod
    def _slot_size(slot):
        try:
            return os.stat(slot_path(slot))[6]
        except OSError:
            return 0

    async def block(self, payload):
        s = self.state
        if s["status"] != INITIATED:
            raise CommandError("not_initiated", "no transfer in progress")
        (n,) = struct.unpack_from("<I", payload, 0)
        data = memoryview(payload)[4:]
        written = self._written()
        expected = written // BLOCK_SIZE
        if n < expected:
            return {"next": expected}  # a repeat of a block already stored
        if n > expected:
            raise CommandError("out_of_order", "expected block %d, got %d" % (expected, n))
        if len(data) != min(BLOCK_SIZE, s["size"] - written):
            raise CommandError("bad_block", "block %d has %d bytes" % (n, len(data)))
        if self._file is None:
            self._file = open(slot_path(s["slot"]), "ab")
        self._file.write(data)
        self._file.flush()  # littlefs commits the append: this is the resume point
        done = written + len(data) == s["size"]
        if done:
            self._close()
            self._p.events.log(eventlog.DOWNLOAD_DONE, s["size"])
        return {"next": n + 1, "done": done}

    async def verify(self, _payload=None):
        s = self.state
        if s["status"] not in (INITIATED, VERIFY_FAILED, VERIFIED):
            raise CommandError("not_initiated", "no image to verify")
        self._close()
        if self._written() != s["size"]:
            raise CommandError("incomplete", "transfer incomplete: %d of %d bytes" % (self._written(), s["size"]))
        s["status"] = VERIFYING
        try:
            m, img_id = await slots.check_async(s["slot"], self._p.board.name)
            if img_id.hex() != s["id"]:
                raise ValueError("image differs from the one initiated")
            await slots.check_signatures(s["slot"], self._p.board.defaults.get("require_approval", False))
        except ValueError as e:
            s["status"] = VERIFY_FAILED
            s["reason"] = str(e)
            s["result"] = "rejected"
            self.save()
            self._p.events.log(eventlog.FW_VERIFY_FAILED, s["slot"])
            raise CommandError("verify_failed", "verification failed: %s" % e)
        s["status"] = VERIFIED
        self.save()
        self._p.events.log(eventlog.FW_READY, s["slot"])
        return {"status": VERIFIED, "version": m["version"]}

    def activating(self):
        if self.state["status"] != VERIFIED:
            raise CommandError("not_verified", "verify the image before activating it")
        self.state["status"] = ACTIVATING
        self.save()

    def settle(self, running_image_id):
        """After a boot: an activation either started the new image (trial) or was reverted."""
        s = self.state
        if s["status"] not in (ACTIVATING, ACTIVATED) or s.get("result") not in (None, "trial"):
            return
        if running_image_id is not None and running_image_id.hex() == s["id"]:
            s["status"], s["result"] = ACTIVATED, "trial"
        else:
            s["status"], s["result"] = ACTIVATION_FAILED, "reverted"
            s["reason"] = s.get("reason") or "the meter went back to the previous image"
        self.save()

    def confirmed(self):
        if self.state.get("result") == "trial":
            self.state["result"] = "confirmed"
            self.save()


def record_failure(reason):
    """Mark an activation as reverted with its reason, from wherever the failure was seen
    (the bootloader before the image runs, or the image's own health check)."""
    try:
        with open(_STATE) as f:
            s = json.load(f)
    except (OSError, ValueError):
        return
    if s.get("status") in (ACTIVATING, ACTIVATED) and s.get("result") in (None, "trial"):
        s["status"], s["result"], s["reason"] = ACTIVATION_FAILED, "reverted", reason
        with open(_STATE, "w") as f:
            json.dump(s, f)
