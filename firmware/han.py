# The home area network's own task (one asyncio task per concern). All it keeps resident is a
# bounded queue of jobs and an event: the HAN's code (han_jobs.py, a technology's driver such as
# han_zigbee.py, the device table) is loaded when a job comes and leaves when the queue is empty,
# so a meter whose HAN is idle meters with none of it in the heap.
import asyncio
from micropython import const
import loader
from bootloader.api import CommandError

_MAX_JOBS = const(8)


class Han:
    def __init__(self, board):
        self.radio = board.han_radio  # None: no HAN radio fitted, and the task never runs
        self.jobs = []  # [kind, argument, result (None until done)], oldest first
        self._wake = asyncio.Event()

    def submit(self, kind, arg=None):
        """Queue a job for the HAN task; refused, with nothing changed, when the queue is full."""
        if len(self.jobs) >= _MAX_JOBS:
            raise CommandError("han_busy", "the HAN has %d jobs waiting: try again shortly" % len(self.jobs))
        job = [kind, arg, None]
        self.jobs.append(job)
        self._wake.set()
        return job

    async def run(self, m):
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.jobs:
                await m.metering.clear_of_close()  # loading the HAN's code is a step metering cannot pause
                try:
                    await loader.run("han_jobs", "serve", m)
                except Exception as e:  # noqa: BLE001 - a job's defect (or no heap to load it) ends that job, not the task
                    if self.jobs:
                        self.jobs.pop(0)[2] = ("fail", "HAN job failed: %r" % e, None)
