# The bootloader's services to the application: boot control, slot information, activation,
# confirm and revert. The application never writes the boot control block itself.
import json
from micropython import const
from bootloader import VERSION, eventlog, image, slots
from bootloader.bootctl import NONE, SLOT_NAMES, REASONS

_ACTIVATE = const(3)
_REVERT = const(4)


class Platform:
    def __init__(self, board, bcb, events, watchdog, manifest, image_id):
        self.board = board
        self.bcb = bcb
        self.events = events
        self.watchdog = watchdog
        self.manifest = manifest
        self.image_id = image_id
        self.bootloader_version = VERSION
        # fn() the application sets to store what the next image checks itself against (its
        # pre-switch snapshot). Not called when the running image is rejected: its view of
        # the meter is not to be trusted.
        self.before_switch = None
        try:
            with open("/identity.json") as f:
                self.identity = json.load(f)
        except (OSError, ValueError):
            self.identity = {"serial": None}

    @property
    def slot(self):
        return self.bcb.active

    @property
    def inactive_slot(self):
        return 1 - self.bcb.active

    @property
    def boot_reason(self):
        return REASONS[self.bcb.reason]

    @property
    def in_trial(self):
        return self.bcb.trial == self.bcb.active

    def status(self):
        """The platform's part of the meter's status: slots, boot control, bootloader."""
        b = self.bcb
        slots = self.slot_versions()
        return {
            "board": self.board.name, "serial": self.identity.get("serial"),
            "active_slot": SLOT_NAMES[b.active], "active_version": slots[SLOT_NAMES[b.active]]["version"],
            "confirmed": b.confirmed, "trial": self.in_trial, "slots": slots,
            "boot_reason": self.boot_reason, "bootloader_version": self.bootloader_version,
            "security_floor": b.floor, "can_revert": self.can_revert(),
            "rejected": [r.hex() for r in b.rejected], "boot_control": b.to_dict(),
        }

    def slot_versions(self):
        out = {}
        for s in (0, 1):
            m, _ = slots.manifest(s)
            out[SLOT_NAMES[s]] = {"version": m["version"] if m else None}
        return out

    def begin_download(self, slot):
        # The slot is about to be overwritten: it can no longer be a revert target.
        if self.bcb.previous == slot:
            self.bcb.previous = NONE
            self.bcb.save()

    def is_rejected(self, image_id):
        return image_id in self.bcb.rejected

    def activate(self, slot):
        """Start a trial of slot and reset into it. Does not return."""
        if self.before_switch:
            self.before_switch()
        b = self.bcb
        b.previous = b.active
        b.active = slot
        b.trial = slot
        b.attempts_left = self.board.defaults.get("trial_attempts", 3)
        b.confirmed = False
        b.pending = _ACTIVATE
        b.save()
        self.events.log(eventlog.FW_ACTIVATED, slot)
        self.board.reset()

    def confirm(self):
        b = self.bcb
        if b.confirmed and b.trial == NONE:
            return False
        b.trial = NONE
        b.confirmed = True
        b.failures = 0
        b.floor = max(b.floor, self.manifest["security_version"])
        # A revert target below the floor just raised could never run again (anti-rollback):
        # it stops being one, and the event log says so.
        dropped = None
        if b.previous != NONE:
            m, _ = slots.manifest(b.previous)
            if m is not None and image.below_floor(m, b.floor):
                b.previous, dropped = NONE, m["security_version"]
        b.save()
        self.events.log(eventlog.CONFIRMED, b.floor)
        if dropped is not None:
            self.events.log(eventlog.REVERT_TARGET_DROPPED, dropped)
        return True

    def can_revert(self):
        """A previous image that reads and is not below the security floor."""
        b = self.bcb
        if b.previous == NONE:
            return False
        m, _ = slots.manifest(b.previous)
        return m is not None and not image.below_floor(m, b.floor)

    def mark_healthy(self):
        """The application is up and its critical checks pass: this boot did not fail."""
        if self.bcb.failures:
            self.bcb.failures = 0
            self.bcb.save()

    def unreject(self, image_id):
        """An operator's authenticated decision to allow a rejected image again."""
        if self.bcb.unreject(image_id):
            self.bcb.save()
            self.events.log(eventlog.UNREJECTED, 0)
            return True
        return False

    def revert(self, reject=False, why=None):
        """Go back to the previous slot and reset. Does not return. Raises ValueError if none."""
        b = self.bcb
        if not self.can_revert():
            raise ValueError("no previous image to revert to")
        if not reject and self.before_switch:
            self.before_switch()
        if reject and self.image_id is not None:
            b.reject(self.image_id)
            if why:
                from bootloader.update_state import record_failure
                record_failure(why)
        b.active, b.previous = b.previous, b.active
        b.trial = NONE
        b.confirmed = True
        b.failures = 0
        b.pending = _REVERT
        b.save()
        self.events.log(eventlog.REVERTED, b.active)
        self.board.reset()
