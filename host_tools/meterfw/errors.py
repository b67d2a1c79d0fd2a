"""Typed errors of the host tools. Only cli.main() turns them into `meterfw: message`."""


class MeterfwError(Exception):
    """Anything the user should see as one clear line."""


class TransportError(MeterfwError):
    """The link failed: no such port, no answer, a broken frame stream."""


class CommandError(MeterfwError):
    """The command could not be carried out: bad input, or the meter refused it."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code
