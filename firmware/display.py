# Customer notices (FR32, BR1) before, during and after an upgrade, on the meter's display (the
# sim keeps a display log; a Pico without a display lights its LED). Before and during: they
# follow the update's states as the transfer records them. The boot a switch caused, and its
# verdict, post their own (boot_tasks.boot_notice and after_confirm).
import asyncio
from micropython import const

_POLL_MS = const(1000)
# DLMS class 18 transfer status -> notice ("%s" is the new version)
_BY_STATUS = {
    1: "Meter software update %s downloading; supply and billing unaffected",
    3: "Meter software update %s ready; installs at the next interval",
    4: "Meter software update %s refused; nothing changed",
}


class Notices:
    def __init__(self, board):
        self._board = board
        self.text = ""

    def show(self, text):
        if text != self.text:
            self.text = text
            self._board.display(text)

    async def follow(self, transfer):
        seen = transfer.state.get("status")
        while True:
            await asyncio.sleep_ms(_POLL_MS)
            s = transfer.state
            if s.get("status") != seen:
                seen = s.get("status")
                text = _BY_STATUS.get(seen)
                if text:
                    self.show(text % s.get("version", ""))
