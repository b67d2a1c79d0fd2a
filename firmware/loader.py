# Code loaded on demand. The heap keeps resident only what runs while the meter meters (the
# application, metering's close path, the link, the outbox); the rest is loaded for the task
# that needs it and leaves after. The table below is the one list of that code. Resident code
# (and the update agent) reaches it only through call() and run(), which name the module and
# the function (a resident module's function too: the link's commands are served so); code
# loaded so imports the on-demand modules it needs with a plain import. When a call returns,
# drop() takes every task module out of sys.modules, and its code leaves the heap once nothing
# running refers to it (its names stay interned).
import asyncio
import gc
import sys
from micropython import const
from bootloader.api import forget

_TRIES = const(5)
# The longest a load takes on a Pico, with a margin. A load is one step that lets no other task
# run: one that starts just before an interval close makes the close that late, so a load while
# the meter meters starts clear of the next close (Metering.clear_of_close).
LOAD_MS = const(150)
_RETRY_MS = const(200)

# The table. A "bootloader." name is the platform's: bootloader/api.py loads it, forget() drops it.
# TASKS: loaded for a task and dropped when a call returns.
TASKS = ("activation", "boot_tasks", "commands", "cmd_change", "cmd_han", "cmd_read", "cmd_status", "event_names",
         "han_jobs", "han_radio", "han_table", "health", "health_data", "interval_reads", "metering_clock", "metering_limit", "metering_reset",
         "metering_restart", "snapshot", "state_edit", "state_json", "state_lists", "state_schema",
         "upgrade_notice", "bootloader.update_state",
         "nan", "nan_serial")  # the network link's driver: opened at start, checked by the health check
# KEPT: the update agent holds a download across many requests, with the platform's transfer:
# kept from the first update command of a boot until the application lets go of it (drop(KEPT)).
KEPT = ("update_agent", "bootloader.transfer", "delta")
# The platform's api function that needs it loads and drops it; room() may load it first.
API = ("bootloader.admission",)


def call(module, fn, *args):
    """module.fn(*args), `module` loaded for the call; task modules leave when it returns."""
    try:
        return getattr(_load(module), fn)(*args)
    finally:
        drop()


async def run(module, fn, *args):
    """await module.fn(*args): call() for a coroutine function, waiting for room to load the
    module when the heap has none just now."""
    try:
        return await getattr(await room(module), fn)(*args)
    finally:
        drop()


async def room(module):
    """`module`, loaded. A module is read in one piece: when the heap has no room that size just
    now, other tasks finish what they hold and it is tried again before giving up."""
    for _ in range(_TRIES):
        try:
            return _load(module)
        except MemoryError:
            gc.collect()
            await asyncio.sleep_ms(_RETRY_MS)
    return _load(module)


def drop(names=TASKS):
    """The modules named out of sys.modules: every task module (those loaded by another task
    too: what runs keeps its own code), or KEPT once the application lets go of the agent."""
    for name in names:
        if name.startswith("bootloader."):
            forget(name[11:])
        else:
            sys.modules.pop(name, None)


def _load(module):
    __import__(module)
    return sys.modules[module]  # the module itself, not its package (bootloader.admission)
