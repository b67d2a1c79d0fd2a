# The home area network's own task (one asyncio task per concern), started when a job is queued
# and ended when the queue is empty. All that stays resident is the bounded queue: the HAN's code
# (han_jobs.py, the drivers of the technologies the jobs need, han_driver_*.py, the device table)
# is loaded for the jobs and leaves after them, so a meter whose HAN is idle meters with none of
# it in the heap.
import asyncio
from micropython import const
import loader
from bootloader.api import CommandError

_MAX_JOBS = const(8)


class Han:
    def __init__(self, m):
        self._m = m
        self.radio = m.board.han_radio  # None: no HAN radio fitted, and no job is ever queued
        self.jobs = []  # [kind, argument, result (None until done)], oldest first
        self._serving = False

    def submit(self, kind, arg=None):
        """Queue a job for the HAN task; refused, with nothing changed, when the queue is full."""
        if len(self.jobs) >= _MAX_JOBS:
            raise CommandError("han_busy", "the HAN has %d jobs waiting: try again shortly" % len(self.jobs))
        job = [kind, arg, None]
        self.jobs.append(job)
        if not self._serving:
            self._serving = True
            asyncio.create_task(self._serve())
        return job

    async def _serve(self):
        m = self._m
        try:
            while self.jobs:
                await m.metering.clear_of_close()  # loading the HAN's code is a step metering cannot pause
                try:
                    await loader.run("han_jobs", "serve", m)
                except Exception as e:  # noqa: BLE001 - a job's defect (or no heap to load it) ends that job, not the HAN
                    if self.jobs:
                        self.jobs.pop(0)[2] = ("fail", "HAN job failed: %r" % e, None)
        finally:
            self._serving = False
