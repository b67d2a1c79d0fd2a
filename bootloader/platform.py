# The bootloader's services to the application: boot control, slot information, activation, confirm
# and revert, and the trial of a new bootloader. The application never writes the boot control
# block, nor the first stage's record, itself.
from bootloader import call
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
        self.serial = False  # read from /identity.json at the first status (status.py)

    @property
    def in_trial(self):
        return self.bcb.trial == self.bcb.active

    # Loaded for the call: status and can_revert (status.py), and the seldom-run operations
    # (switching.py); api.py says what each does.
    def status(self):
        return call("status", "status", self)

    def mark_healthy(self):
        return call("switching", "mark_healthy", self)

    def mark_unhealthy(self, why):
        return call("switching", "mark_unhealthy", self, why)

    def confirm(self):
        return call("switching", "confirm", self)

    def can_revert(self):
        return call("status", "can_revert", self)

    def unreject(self, image_id):
        return call("switching", "unreject", self, image_id)

    def activate(self, slot):
        call("switching", "activate", self, slot)

    def revert(self, reject=False, why=None, cause=None):
        call("switching", "revert", self, reject, why, cause)

    def bootloader_failed(self, why):
        call("switching", "bootloader_failed", self, why)
