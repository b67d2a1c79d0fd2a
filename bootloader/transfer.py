# Image transfer into the inactive slot, in the states of DLMS/COSEM image transfer (class 18):
# initiate -> blocks -> verify. Shared by the application's update agent and the recovery console,
# so a meter whose application is broken downloads images the same way. Progress lives in the slot
# file's length (whole blocks, committed every 64 KiB), so a transfer resumes from the first block
# not yet transferred after a dropped link or a power cut.
#
# Credit-based flow control. On a Pico, erasing or programming flash turns interrupts off and the
# UART keeps only 32 bytes meanwhile, so no flash work may happen while blocks are arriving. Every
# block reply (and the initiate reply) carries `next` and `window`: the host may send blocks next ..
# next+window-1 back to back, then waits for the reply to the last of them, which carries the next
# grant. The blocks of a window go into RAM (the board's transfer_window_bytes, whole erase sectors)
# and are written after the window is complete; only then is the next window granted. Blocks held in
# RAM are not yet transferred: after a reset the host simply sends them again, and a host that goes
# back to a block still in RAM (after losing a reply) overwrites it there. The application's own
# flash work is scheduled around the windows through `schedule` (api.py).
import gc
import os
import struct
import time
from micropython import const
from bootloader import eventlog, image, slots, update_state
from bootloader.bootctl import NONE, STAGING, slot_path
from bootloader.protocol import INITIATED, VERIFYING, VERIFIED, VERIFY_FAILED, ACTIVATING, CommandError
from bootloader.update_state import load, summary

# 2 KiB blocks: a block's frame type, seq, CRC, number, session trailer, SLIP ends and escapes
# (about 1 in 128 bytes of random-looking data) cost ~48 bytes on the line, 2.3% (3.9% at 1 KiB).
BLOCK_SIZE = const(2048)
_BLOCK_WIRE_EXTRA = const(48)
_ASSUMED_LINK_BPS = const(11520)  # 115200 baud 8N1, when the board does not say
_GRANT_MARGIN_MS = const(40)  # host turnaround and scheduling slack before the app's flash work
# Writing a window takes an erase and 16 page programs per 4 KiB sector (~52 ms), and littlefs'
# metadata now and then: no window is written this close to the application's flash work.
_SECTOR_WRITE_MS = const(52)
_FLUSH_MARGIN_MS = const(100)
_SYNC_BYTES = const(65536)  # commit the slot file this often: the resume point's granularity


class Transfer:
    block_size = BLOCK_SIZE

    def __init__(self, platform, schedule=None):
        self._p = platform
        self._file = None
        self.schedule = schedule  # the application's own flash work (api.py), or None
        self._bufs = None  # a window's blocks in RAM while a download runs (see _window_buffer)
        self._held = 0  # blocks in _bufs, following the blocks in flash
        self._flash_bytes = None  # slot file length, read once per boot, then counted
        self._synced = 0  # ... and how much of it littlefs has committed
        self._grant_end = 0  # the host may send blocks up to (not including) this one
        self._collect = False  # a window was written: collect once the next one is on its way
        # A window per round trip: the larger, the less the reply and the host's turnaround cost
        # (each ~5 ms a window on a Pico), for that much RAM while a download runs.
        cfg = platform.board.config
        self._window_blocks = cfg["transfer_window_bytes"] // BLOCK_SIZE
        self._flush_ms = cfg["transfer_window_bytes"] // cfg["flash"]["block_size"] * _SECTOR_WRITE_MS + _FLUSH_MARGIN_MS
        bps = platform.board.link_bytes_per_s or _ASSUMED_LINK_BPS
        self._block_ms = (BLOCK_SIZE + _BLOCK_WIRE_EXTRA) * 1000 // bps + 1
        self.state = load()
        self.changed = None  # fn(state), called after each stored change (the app's notices)

    def save(self):
        update_state.store(self.state)
        if self.changed:
            self.changed(self.state)

    def public_state(self):
        s = self.state
        out = summary(s)
        if s["status"] == INITIATED:
            out["size"] = s["size"]
            out["block_size"] = BLOCK_SIZE
            out["first_not_transferred_block"] = self._first_missing()
            # A fresh grant: a host asks after a break (a resume, a lost reply), and a grant from
            # before it may reach into the application's next flash work by now.
            nxt = self._next_block()
            self._grant_end = nxt + self._fit(self._room(nxt))
            out["next_block"] = nxt
            out["window"] = self._grant_end - nxt
        return out

    def _close(self):
        if self._file:
            self._file.close()
            self._file = None

    def release(self):
        """Close the slot file and drop the window's RAM. Blocks held there were not transferred
        yet: the host sends them again."""
        self._close()
        self._bufs = None
        self._held = 0

    async def initiate(self, head, admitted=None, base=None):
        """Start a transfer of the image whose head (manifest and signatures) this is. `admitted`
        is api.admit's verdict on it when the caller has it already; `base`: see api.py."""
        if admitted is None:
            from bootloader.api import admit

            admitted = await admit(self._p, head)
        m, img_id, off, signature_ms = admitted
        p = self._p
        size = off + m["payload_size"]
        # A bootloader downloads beside the slots: the revert target stays what it was.
        slot = STAGING if m["kind"] == "bootloader" else p.inactive_slot
        st = os.statvfs("/")
        old = _size(slot)
        free = st[0] * st[3] + old - 8 * st[0]  # keep a few blocks for littlefs metadata and meter data
        if size > free:
            raise CommandError("no_space", "image needs %d bytes, %d free" % (size, free))
        await self.clear_of_app_flash()
        if p.bcb.previous == slot:  # about to be overwritten: it can no longer be a revert target
            p.bcb.previous = NONE
            p.bcb.save()
        self._close()
        open(slot_path(slot), "wb").close()
        self.state = {"status": INITIATED, "kind": m["kind"], "slot": slot, "size": size, "id": img_id.hex(),
                      "version": m["version"], "result": None, "reason": None, "base": base and base.hex()}
        self.save()
        p.events.log(eventlog.DOWNLOAD_STARTED, size)
        self._held = 0
        self._flash_bytes = self._synced = 0
        self._grant_end = 0
        await self._grant()
        return {"block_size": BLOCK_SIZE, "first_not_transferred_block": 0,
                "blocks": self._blocks(), "next": 0, "window": self._grant_end, "signature_ms": signature_ms}

    # -- blocks and windows -------------------------------------------------------------------
    def _blocks(self):
        return (self.state["size"] + BLOCK_SIZE - 1) // BLOCK_SIZE

    def _flashed(self):
        if self._flash_bytes is None:
            self._flash_bytes = self._synced = _size(self.state["slot"])
        return self._flash_bytes

    def _first_missing(self):
        """DLMS's first not transferred block: the blocks in flash (RAM does not count)."""
        flashed = self._flashed()
        return self._blocks() if flashed == self.state["size"] else flashed // BLOCK_SIZE

    def _next_block(self):
        return self._first_missing() + self._held

    def receiving(self):
        """A window is granted and its blocks are on their way: no flash work now."""
        return self.state["status"] == INITIATED and self._grant_end > self._next_block()

    def _reply(self):
        """next u32, window u16, done u8: binary, because the grant is on the critical path of
        every window, and as JSON it would take three times as long on a 115200 baud line."""
        nxt = self._next_block()
        done = self._flashed() == self.state["size"]
        return struct.pack("<IHB", nxt, max(self._grant_end - nxt, 0), done)

    def _window_buffer(self):
        """Blocks of RAM for a window: whole erase sectors, in block-sized pieces because the heap
        is often too fragmented for 4 KiB in one, and held only while a download runs. With
        none to be had the window is one block, written before the reply: slower, still
        lossless."""
        if self._bufs is None:
            self._bufs = []
            try:
                while len(self._bufs) < self._window_blocks:
                    self._bufs.append(bytearray(BLOCK_SIZE))
            except MemoryError:
                pass
        return max(len(self._bufs), 1)

    async def block(self, payload):
        s = self.state
        if s["status"] != INITIATED:
            raise CommandError("not_initiated", "no transfer in progress")
        (n,) = struct.unpack_from("<I", payload, 0)
        first = self._first_missing()
        if n < first or n > first + self._held:
            return self._reply()  # already in flash, or after a gap: the reply says where to go on
        if n >= self._blocks():
            raise CommandError("bad_block", "block %d is past the end of the image" % n)
        size = min(BLOCK_SIZE, s["size"] - n * BLOCK_SIZE)
        if len(payload) - 4 != size:
            raise CommandError("bad_block", "block %d has %d bytes, not %d" % (n, len(payload) - 4, size))
        data = memoryview(payload)[4:]
        if self._collect:
            # The last window's garbage, collected as the next window's first block arrives: the
            # rest of it is on the line meanwhile (the UART's ring takes it, interrupts stay on), so
            # the collection (~20 ms on a Pico) costs no line time, as it did before the grant.
            self._collect = False
            gc.collect()
        room = self._window_buffer()
        if not self._bufs:
            await self._write_window(data)
        else:
            self._bufs[n - first][:size] = data
            self._held = n - first + 1  # a block sent again while in RAM replaces it and what followed
            if self._held == room or n + 1 == self._blocks():
                await self._write_window(None)
        if n + 1 >= self._grant_end:
            await self._grant()  # the host has used its credit: only now may it send more
        return self._reply()

    async def clear_of_app_flash(self):
        """Before flash work of our own (it blocks the CPU): an interval close due meanwhile
        would be late, so let it go first."""
        if self.schedule and self.schedule.ms_to_next() < self._flush_ms:
            await self.schedule.settle()

    async def _write_window(self, data):
        """The window is complete and nothing is arriving: write it (the blocks held in RAM, or
        `data`) to the slot in one go."""
        await self.clear_of_app_flash()
        s = self.state
        if self._file is None:
            self._file = open(slot_path(s["slot"]), "ab")
        written = 0
        if data is None:
            n = self._flashed() // BLOCK_SIZE
            for i in range(self._held):
                written += self._file.write(memoryview(self._bufs[i])[:min(BLOCK_SIZE, s["size"] - (n + i) * BLOCK_SIZE)])
        else:
            written = self._file.write(data)
        self._flash_bytes += written
        if self._flash_bytes - self._synced >= _SYNC_BYTES or self._flash_bytes == s["size"]:
            # littlefs commits the append: the resume point after a power cut. Not after every
            # window: after a commit, the next append first copies the file's partly filled last
            # block to a fresh one, an extra erase (45 ms) each time.
            self._file.flush()
            self._synced = self._flash_bytes
        self._held = 0
        # Collected soon (see block()), the heap stays in large pieces; left to fill the heap, the
        # collection that finally comes leaves live objects strewn across it, and the next large
        # allocation (a module's code) finds no room.
        self._collect = True
        if self._flash_bytes == s["size"]:
            self._collect = False
            gc.collect()
            self._close()
            self._bufs = None
            self._p.events.log(eventlog.DOWNLOAD_DONE, s["size"])

    async def _grant(self):
        nxt = self._next_block()
        want = self._room(nxt)
        w = self._fit(want)
        while want and not w:
            await self.schedule.settle()  # the application writes flash soon: grant after that
            w = self._fit(want)
        self._grant_end = nxt + w

    def _room(self, nxt):
        """Blocks the host may send from nxt, as far as RAM and the image go."""
        left = self._blocks() - nxt
        return min(self._window_buffer() - self._held, left) if left > 0 else 0

    def _fit(self, want):
        """How many of `want` blocks arrive before the application's next flash work."""
        if not self.schedule or want <= 0:
            return max(want, 0)
        ms = self.schedule.ms_to_next() - _GRANT_MARGIN_MS
        return max(0, min(want, ms // self._block_ms))

    async def verify(self, _payload=None):
        s = self.state
        if s["status"] not in (INITIATED, VERIFY_FAILED, VERIFIED):
            raise CommandError("not_initiated", "no image to verify")
        self._close()
        if _size(s["slot"]) != s["size"]:
            raise CommandError("incomplete", "transfer incomplete: %d of %d bytes" % (_size(s["slot"]), s["size"]))
        s["status"] = VERIFYING
        t0_ms = time.ticks_ms()
        try:
            # The slot's payload against its manifest's hash, and that manifest against the one
            # whose signatures the initiate checked (its hash is the image id): the same bytes, so
            # the signatures hold for it without a second Ed25519 check.
            m, img_id = await slots.check(s["slot"], self._p.board.name, self._floor(), s.get("kind", "firmware"))
            if img_id.hex() != s["id"]:
                raise ValueError("image differs from the one initiated")
        except ValueError as e:
            await self.clear_of_app_flash()
            s["status"] = VERIFY_FAILED
            s["reason"] = str(e)
            s["result"] = "rejected"
            self.save()
            self._p.events.log(eventlog.FW_VERIFY_FAILED, s["slot"])
            raise CommandError("verify_failed", "verification failed: %s" % e)
        verify_ms = time.ticks_diff(time.ticks_ms(), t0_ms)
        await self.clear_of_app_flash()
        s["status"] = VERIFIED
        self.save()
        self._p.events.log(eventlog.FW_READY, s["slot"])
        return {"status": VERIFIED, "version": m["version"], "verify_ms": verify_ms}

    def _floor(self):
        """The security floor of what this transfer carries: the images', or the bootloader's."""
        return self._p.record.floor if self.state.get("kind") == "bootloader" else self._p.bcb.floor

    def above_floor(self):
        """Refuse to activate an image below the security floor (raised since its verify, say)."""
        m, _ = slots.manifest(self.state["slot"])
        if m is None or image.below_floor(m, self._floor()):
            raise CommandError("rollback", "the image is below the meter's security floor %d" % self._floor())

    def activating(self):
        if self.state["status"] != VERIFIED:
            raise CommandError("not_verified", "verify the image before activating it")
        self.above_floor()
        self.state["status"] = ACTIVATING
        self.save()


def _size(slot):
    try:
        return os.stat(slot_path(slot))[6]
    except OSError:
        return 0
