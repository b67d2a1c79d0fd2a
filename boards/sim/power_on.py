# What MicroPython's C start-up does on a Pico, played on the unix port: bring up the
# hardware, mount littlefs at / (formatting it on a first power-on, as the rp2 port does),
# and run /main.py from the flash filesystem.
# Run as `micropython -m power_on . RESET_CAUSE CTL_OUT_FD CTL_IN_FD` in the sim's folder, compiled
# into its hw/ with the models (hil/supervisor/power.py).
import sys
import os
import vfs
import gc

gc.collect()
_before = gc.mem_alloc()
_here = __file__.rsplit("/", 1)[0]
sys.path.insert(0, _here)
import simhw  # noqa: E402

hw = simhw.power_on(sys.argv, _here + "/board.json")
# What the simulated silicon itself takes of the heap (flash, UART, metrology models, the
# control pipe): C on a Pico, so the rig reports the application's share without it.
gc.collect()
hw.models_heap = gc.mem_alloc() - _before
del _before
try:
    fs = vfs.VfsLfs2(hw.flash)
except OSError:
    vfs.VfsLfs2.mkfs(hw.flash)
    fs = vfs.VfsLfs2(hw.flash)
vfs.umount("/")
vfs.mount(fs, "/")
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]
del sys.argv[1:]
try:
    with open("/main.py") as f:  # compiled, its source let go, as the rp2 port runs it
        _main = compile(f.read(), "main.py", "exec")
    exec(_main, {"__name__": "__main__"})
except Exception as e:  # noqa: BLE001 - on a Pico this lands on the debug UART, here console.log
    # The unix port prints uncaught tracebacks to stdout, which is the meter's serial line.
    sys.print_exception(e, sys.stderr)
    sys.exit(1)
