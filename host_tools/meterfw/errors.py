"""Typed errors of the host tools, and the exit codes they end in. Only cli.main() turns them into
`meterfw: message`."""

# The exit codes, as README and `meterfw --help` list them.
EXIT_OK = 0
EXIT_ERROR = 1  # any MeterfwError without a code of its own
EXIT_UNHEALTHY = 2  # `health`: a critical or important item failed
EXIT_REVERTED = 3  # `upgrade`: the meter went back to the previous image
EXIT_REJECTED = 4  # `upgrade`: the image was refused; the meter kept what it had
EXIT_FAILED = 5  # `upgrade`: no verdict in time
EXIT_SERIAL_MISMATCH = 6  # --serial: the meter on the port is another one; nothing was done
EXIT_USAGE = 64  # bad command line (sysexits EX_USAGE): not argparse's 2, which `health` uses
EXIT_INTERNAL = 70  # a defect of meterfw itself (sysexits EX_SOFTWARE)
EXIT_INTERRUPTED = 130  # Ctrl-C


class MeterfwError(Exception):
    """Anything the user should see as one clear line."""

    exit_code = EXIT_ERROR


class TransportError(MeterfwError):
    """The link failed: no such port, no answer, a broken frame stream."""


class ReplyError(MeterfwError):
    """The meter answered, but not with what the command reads: not JSON, not an object, a field
    missing or of another type. Not a TransportError: sending again would not repair it."""


class CommandError(MeterfwError):
    """The command could not be carried out: bad input, or the meter refused it."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


class SerialMismatch(MeterfwError):
    """The meter on the port is not the one the operator pinned with --serial."""

    exit_code = EXIT_SERIAL_MISMATCH
