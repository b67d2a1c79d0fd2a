# The bootloader's services to the application: boot control, slot information, activation, confirm
# and revert, and the trial of a new bootloader. The application never writes the boot control
# block, nor the first stage's record, itself.
from bootloader import call, eventlog
from bootloader.bootctl import REASONS


class Platform:
    def __init__(self, board, bcb, events, watchdog, record, manifest, image_id):
        self.board = board
        self.bcb = bcb
        self.events = events
        self.watchdog = watchdog
        # The first stage's record: which bootloader copy runs, on trial or not, the bootloader
        # security floor; boot.py adds the running copy's version and security version.
        self.record = record
        self.manifest = manifest
        self.image_id = image_id
        # Fixed for the boot: only a reset (activate, revert) changes the active slot.
        self.slot = bcb.active
        self.inactive_slot = 1 - bcb.active
        self.boot_reason = REASONS[bcb.reason]
        # fn() the application sets to store what the next image checks itself against (its
        # pre-switch snapshot). Not called when the running image is rejected: its view of the meter
        # is not to be trusted.
        self.before_switch = None

    @property
    def in_trial(self):
        return self.bcb.trial == self.bcb.active

    def mark_healthy(self):
        """The application is up and its critical checks pass: this boot did not fail, and a
        bootloader on trial has booted a healthy application, which confirms it."""
        if self.bcb.failures:
            self.bcb.failures = 0
            self.bcb.save()
        r = self.record
        if r.trial:
            r.trial = 0
            r.floor = max(r.floor, r.security)
            r.save()
            self.events.log(eventlog.BOOTLOADER_CONFIRMED, r.security)

    # The seldom-run operations are switching.py's, loaded for the call; api.py says what each does.
    def mark_unhealthy(self, why):
        return call("switching", "mark_unhealthy", self, why)

    def status(self):
        return call("switching", "status", self)

    def can_revert(self):
        return call("switching", "can_revert", self)

    def confirm(self):
        return call("switching", "confirm", self)

    def unreject(self, image_id):
        return call("switching", "unreject", self, image_id)

    def activate(self, slot):
        call("switching", "activate", self, slot)

    def revert(self, reject=False, why=None):
        call("switching", "revert", self, reject, why)

    def bootloader_failed(self, why):
        call("switching", "bootloader_failed", self, why)
