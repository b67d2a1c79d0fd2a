# Customer notices (FR32, BR1) before, during and after an upgrade, on the meter's display (the
# sim keeps a display log; a Pico without a display lights its LED). Before and during: they
# follow the update's states as the transfer stores them (its `changed` hook). The boot a switch caused, and its
# verdict, post their own (boot_tasks.boot_notice and after_confirm).

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

    def transfer_changed(self, state):
        """The transfer's hook: called as each new status is stored."""
        text = _BY_STATUS.get(state.get("status"))
        if text:
            self.show(text % state.get("version", ""))
