# A tiny MicroPython device for supervisor tests: echoes its UART and obeys a few commands.
# argv: SIM_DIR (".") RESET_CAUSE CTL_OUT_FD CTL_IN_FD; cwd is SIM_DIR.
#
# If ./echo_wdt holds a number, the watchdog is armed with that timeout (ms) and fed from the
# loop. Commands arrive in the echoed byte stream:
#   ~~hang~~        stop feeding the watchdog (keep echoing)
#   ~~reset~~       ask the supervisor for a reset, then exit
#   ~~resetstall~~  ask for a reset, then never exit
#   ~~exit~~        exit without asking for a reset (a crash to the REPL)
#   ~~crash~~       raise an exception (traceback on stderr, the console)
#   ~~deaf~~        stop reading the UART for 3 s (bytes queue up in the input buffer)
#   ~~bogus~~       send an unknown ctl line
import sys
import select
import time

cause = sys.argv[2]
ctl = open("/dev/fd/%s" % sys.argv[3], "wb")
out = sys.stdout.buffer
inp = sys.stdin.buffer


def ctl_send(line):
    ctl.write(line.encode() + b"\n")


wdt_ms = 0
try:
    with open("echo_wdt") as f:
        wdt_ms = int(f.read().strip())
except OSError:
    pass
if wdt_ms:
    ctl_send("wdt %d" % wdt_ms)
out.write(b"boot " + cause.encode() + b"\n")
ctl_send("log echo device up, cause " + cause)


def main():
    buf = bytearray(256)
    mv = memoryview(buf)
    poller = select.poll()
    poller.register(0, select.POLLIN)
    feeding = True
    last_feed = time.ticks_ms()
    tail = b""
    while True:
        now = time.ticks_ms()
        if wdt_ms and feeding and time.ticks_diff(now, last_feed) >= 100:
            ctl_send("feed")
            last_feed = now
        if not poller.poll(50):
            continue
        n = inp.readinto(buf)
        if not n:
            continue
        out.write(mv[:n])
        seen = tail + bytes(mv[:n])
        tail = seen[-16:]
        if b"~~" not in seen:
            continue
        if b"~~hang~~" in seen:
            feeding = False
        elif b"~~resetstall~~" in seen:
            ctl_send("reset")
            while True:
                time.sleep_ms(1000)
        elif b"~~reset~~" in seen:
            ctl_send("reset")
            sys.exit(0)
        elif b"~~exit~~" in seen:
            sys.exit(0)
        elif b"~~crash~~" in seen:
            raise RuntimeError("echo device crashed on request")
        elif b"~~deaf~~" in seen:
            t0 = time.ticks_ms()
            while time.ticks_diff(time.ticks_ms(), t0) < 3000:
                if wdt_ms and feeding:
                    ctl_send("feed")
                time.sleep_ms(100)
        elif b"~~bogus~~" in seen:
            ctl_send("bogus line")
        else:
            continue
        tail = b""


# This unix-port build prints uncaught tracebacks on stdout (the UART); the console is stderr.
try:
    main()
except Exception as e:
    sys.print_exception(e, sys.stderr)
    sys.exit(1)
