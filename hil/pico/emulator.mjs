// The emulated Pico: stock MicroPython firmware for the RP2040, unmodified, in rp2040js, with the
// hardware around the chip played by the rig. One process is one power-on of the chip; the
// supervisor (hil/supervisor/) starts it the way it starts the unix-port simulator:
//
//   node emulator.mjs DIR CAUSE CTL_OUT_FD CTL_IN_FD [USB_FD [HAN_TX_FD HAN_RX_FD]]
//                                                  CAUSE: power-on | watchdog | reset
//
// fd 0/1 are the meter's UART0 line (the supervisor's device pty), fd 2 the debug console
// (DIR/console.log); the control lines go to and come from the supervisor on the two CTL fds
// (non-blocking), and USB_FD, when given, is the USB CDC port (the REPL, where mpremote connects).
// HAN_TX_FD and HAN_RX_FD, when given, are the rig's HAN medium: UART1 is the HAN co-processor's
// line, relayed to and from them a text frame a line (the sim's radio pipes, fds 5 and 6).
//
// What the rig plays, and the three defects of rp2040js 1.4.1 it works around:
//  - Flash: its SSI is a stub, so writes would be lost. The boot ROM's flash_range_erase and
//    flash_range_program are replaced by breakpoints; the break handler erases or programs the
//    emulated flash, writes the change through to DIR/flash.img, and stalls the CPU for the flash
//    chip's erase or program time (the clock advances, no instruction runs, interrupts wait), so
//    UART bytes beyond the 32-byte receive FIFO are lost as on silicon.
//  - USB: its CDC host model answers every armed OUT endpoint with an empty packet 10 us later,
//    an interrupt storm a real host does not cause; this host holds the read until it has bytes.
//  - UART: it raises the TX interrupt on every interrupt check, so the firmware spins in its
//    handler; here the TX interrupt is raised only when a byte is written.
//  - Power, reset and the watchdog: the emulator does not reset the chip, so a watchdog or a
//    machine.reset() ends this process and the supervisor starts the next boot, keeping flash.
//  - The metrology front-end: an ADE7953 on SPI0 fed from the host twin's energy function.
//  - The RTC: a battery-backed RV-8803 on I2C1, set from the rig's clock, kept in DIR/rtc.json.
//
// Time: emulated time is cycle-counted at 125 MHz. It never runs ahead of the wall clock: while
// the chip idles it is held to the wall clock (so a 1 s interval lasts 1 s), while it computes
// it falls behind (the emulator is slower than silicon) and catches up at the next idle. The rig's
// clock, which the RTC and the front-end both read, is the wall clock at power-on plus emulated
// time since, so the meter's clock, its front-end and the host twin agree, and every figure
// measured inside the meter is Pico time.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { RP2040 } from 'rp2040js';
import { Ade7953, CdcHost, Rv8803, adeRegisters, energiesInSecond } from './parts.mjs';

const [dir, cause, ctlOutArg, ctlInArg, usbArg, hanTxArg, hanRxArg] = process.argv.slice(2);
if (!ctlInArg) {
  process.stderr.write('usage: node emulator.mjs DIR CAUSE CTL_OUT_FD CTL_IN_FD [USB_FD [HAN_TX_FD HAN_RX_FD]]\n');
  process.exit(2);
}
const sim = JSON.parse(fs.readFileSync(path.join(dir, 'sim.json'), 'utf8'));
const pico = sim.pico;
const FLASH_SIZE = pico.flash_bytes;
const ERASE_NS = Math.round(pico.erase_ms * 1e6);
const PAGE_NS = Math.round(pico.page_program_ms * 1e6);
const CPU_HZ = 125e6;

// --- control lines ------------------------------------------------------------------------------
const ctlOut = parseInt(ctlOutArg, 10);
const ctlIn = parseInt(ctlInArg, 10);
function ctl(line) {
  try {
    fs.writeSync(ctlOut, line + '\n');
  } catch {
    // the supervisor is gone: the power goes with it
  }
}
let cutPlan = null; // [operations left, torn]
let ctlInBuf = '';
function readCtl() {
  const buf = Buffer.alloc(256);
  for (;;) {
    let n;
    try {
      n = fs.readSync(ctlIn, buf, 0, buf.length, null);
    } catch (e) {
      if (e.code === 'EAGAIN') break;
      return;
    }
    if (!n) break;
    ctlInBuf += buf.toString('latin1', 0, n);
  }
  const lines = ctlInBuf.split('\n');
  ctlInBuf = lines.pop();
  for (const line of lines) {
    const [word, n, kind] = line.trim().split(/\s+/);
    if (word === 'cut') cutPlan = [parseInt(n, 10), kind === 'torn'];
    // The rig asks for the chip's time, to measure host-side spans in emulated (Pico) time.
    if (word === 'clock') ctl(`clock ${n} ${Math.round(clock.nanos / 1e3)} ${Math.round(wallNs() / 1e3)}`);
  }
}

// --- the chip ------------------------------------------------------------------------------------
const mcu = new RP2040();
mcu.logger = { debug() {}, info() {}, warn() {}, error(name, msg) { process.stderr.write(`[rp2040js] ${name}: ${msg}\n`); } };
mcu.loadBootrom(new Uint32Array(new Uint8Array(fs.readFileSync(pico.bootrom)).buffer));
const flashPath = path.join(dir, 'flash.img');
const flashFd = fs.openSync(flashPath, 'r+');
fs.readSync(flashFd, mcu.flash, 0, FLASH_SIZE, 0);
const core = mcu.core;
const clock = mcu.clock;
core.PC = 0x10000000;

// The watchdog's reason register survives a watchdog reset (machine.reset() is one too), as on
// silicon, so machine.reset_cause() tells a watchdog from a power-on.
const watchdog = mcu.findPeripheral(0x40058000);
watchdog.reason = { watchdog: 1, reset: 2 }[cause] || 0;
watchdog.onWatchdogTrigger = () => {
  const forced = watchdog.reason === 2;
  ctl(forced ? 'reset' : 'watchdog');
  stop();
};

// --- flash: the boot ROM's erase and program, done here ---------------------------------------------
const BK_ERASE = 0xe0;
const BK_PROGRAM = 0xe1;
function romFunction(code) {
  const rom = new DataView(mcu.bootrom.buffer);
  let p = rom.getUint16(0x14, true);
  for (;;) {
    const c = rom.getUint16(p, true);
    if (!c) throw new Error('boot ROM function ' + code + ' not found');
    if (c === (code.charCodeAt(0) | (code.charCodeAt(1) << 8))) return rom.getUint16(p + 2, true) & ~1;
    p += 4;
  }
}
{
  const rom = new DataView(mcu.bootrom.buffer);
  rom.setUint16(romFunction('RE'), 0xbe00 | BK_ERASE, true); // BKPT #imm8
  rom.setUint16(romFunction('RP'), 0xbe00 | BK_PROGRAM, true);
}
let flashOps = 0;
let power = true;
function flashOp(kind, offset, count, data) {
  flashOps += 1;
  ctl('w');
  readCtl();
  let torn = false;
  if (cutPlan) {
    cutPlan[0] -= 1;
    if (cutPlan[0] <= 0) {
      torn = cutPlan[1];
      if (!torn) return powerCut(false);
      count = kind === 'erase' ? count >> 1 : Math.max(1, count >> 1);
    }
  }
  const bytes = mcu.flash.subarray(offset, offset + count);
  if (kind === 'erase') bytes.fill(0xff);
  else for (let i = 0; i < count; i++) bytes[i] &= data[i]; // NOR: a program only clears bits
  fs.writeSync(flashFd, bytes, 0, count, offset);
  if (torn) return powerCut(true);
  const ns = kind === 'erase' ? ERASE_NS * Math.ceil(count / 4096) : PAGE_NS * Math.ceil(count / 256);
  stall(ns);
}
function powerCut(torn) {
  saveRigClock(true);
  ctl(`cut ${torn ? 'torn' : 'clean'} ${flashOps}`);
  power = false; // nothing runs until the supervisor ends this process
}
mcu.onBreak = (code) => {
  const r = core.registers;
  if (code === BK_ERASE) {
    flashOp('erase', r[0], r[1]);
  } else if (code === BK_PROGRAM) {
    const src = r[1] - 0x20000000;
    flashOp('program', r[0], r[2], mcu.sram.subarray(src, src + r[2]));
  } else {
    process.stderr.write(`[rig] breakpoint ${code} at ${(core.PC - 2).toString(16)}: halted\n`);
    power = false;
    return;
  }
  core.PC = core.LR & ~1; // return from the ROM function
};

// The CPU runs nothing while the flash chip is busy; time goes on (the clock fires every alarm
// on the way, in order), and so do the peripherals and the line.
function stall(ns) {
  clock.tick(ns);
}

// --- the UARTs: UART0 the meter's line, UART1 the HAN co-processor ------------------------------
// Bytes from the far end reach the chip at the UART's line rate, one at a time; one that finds the
// 32-byte receive FIFO full (interrupts held off by a flash operation) or the UART off is lost.
function uartLine(uart, onTx) {
  const line = { tx: [], rx: [], lost: 0, delivered: 0, armed: false };
  uart.checkInterrupts = function () {
    this.rp2040.setInterrupt(this.irq, !!(this.interruptStatus & this.interruptMask));
  };
  uart.onByte = (b) => {
    line.tx.push(b);
    uart.interruptStatus |= 1 << 5; // TX: the (infinite) FIFO took the byte
    uart.checkInterrupts();
    onTx();
  };
  const alarm = clock.createAlarm(deliver);
  function byteNs() {
    const baud = uart.baudDivider ? uart.baudRate : 115200;
    return 1e9 * 10 / baud;
  }
  function deliver() {
    line.armed = false;
    const b = line.rx.shift();
    if (b === undefined) return;
    if (uart.enabled && uart.rxEnabled && !uart.rxFIFO.full) {
      uart.feedByte(b);
      line.delivered += 1;
    } else {
      line.lost += 1;
    }
    arm();
  }
  function arm() {
    if (!line.armed && line.rx.length) {
      line.armed = true;
      alarm.schedule(byteNs());
    }
  }
  line.receive = (buf) => {
    for (const b of buf) line.rx.push(b);
    wake();
    arm();
  };
  return line;
}
const uart0 = uartLine(mcu.uart[0], () => scheduleFlush());
// The HAN co-processor (a Zigbee NCP's host UART, 115200 8N1): the rig's medium on two fds, its
// transmit and its receive, one text frame a line. Without them the co-processor is unplugged:
// what the chip sends is lost and nothing answers.
const han = uartLine(mcu.uart[1], () => scheduleFlush());
const hanTx = hanTxArg ? parseInt(hanTxArg, 10) : null;

// --- USB CDC: the REPL ----------------------------------------------------------------------------
const usb = new CdcHost(mcu.usbCtrl);
const usbFd = usbArg ? parseInt(usbArg, 10) : null;
// What the chip says on USB goes to the console log, and to the USB port when its host reads it.
// Nobody may be reading (the port's buffer then fills): writes go out one at a time in the
// background, and what would pile up behind them beyond 64 KB is dropped, as a CDC device's
// output is when no host takes it. The emulator itself never waits for the port.
const USB_BACKLOG = 65536;
let usbBacklog = [];
let usbBacklogBytes = 0;
let usbWriting = false;
function usbWrite() {
  if (usbWriting || !usbBacklog.length) return;
  const out = Buffer.concat(usbBacklog);
  usbBacklog = [];
  usbBacklogBytes = 0;
  usbWriting = true;
  fs.write(usbFd, out, () => {
    usbWriting = false;
    usbWrite();
  });
}
usb.onSerialData = (buf) => {
  fs.writeSync(2, buf);
  if (usbFd === null || usbBacklogBytes + buf.length > USB_BACKLOG) return;
  usbBacklog.push(buf);
  usbBacklogBytes += buf.length;
  usbWrite();
};

// --- the rig's clock, the RTC and the front-end ---------------------------------------------------
// The rig's clock is continuous across resets and power cuts: how far the chip was behind the
// wall clock when its last power-on ended (kept in DIR/rigclock.json) carries over, and the new
// power-on catches it up when it idles, as it would any other backlog. Without that, every reboot
// would jump the meter's clock and front-end forward by the backlog, as no real reboot does.
const rigClockPath = path.join(dir, 'rigclock.json');
const carriedLagMs = (() => {
  try {
    return Math.max(0, JSON.parse(fs.readFileSync(rigClockPath, 'utf8')).lag_ms) || 0;
  } catch {
    return 0;
  }
})();
const bootWallMs = Date.now() - carriedLagMs;
const wallAtBoot = performance.now();
function rigMs() {
  return bootWallMs + clock.nanos / 1e6;
}
let rigClockSaved = 0;
function saveRigClock(force) {
  const now = performance.now();
  if (!force && now - rigClockSaved < 100) return;
  rigClockSaved = now;
  fs.writeFileSync(rigClockPath, JSON.stringify({ lag_ms: Math.round((wallNs() - clock.nanos) / 1e6) }));
}
const rtcPath = path.join(dir, 'rtc.json');
new Rv8803(mcu.i2c[pico.rtc_i2c], pico.rtc_addr, rigMs, () => {
  try {
    return JSON.parse(fs.readFileSync(rtcPath, 'utf8')).adjust_ms || 0;
  } catch {
    return 0;
  }
}, (adjustMs) => fs.writeFileSync(rtcPath, JSON.stringify({ adjust_ms: adjustMs })));
const seed = sim.seed ?? 1;
const loadCurve = sim.load_curve ?? null; // the premises' load, resolved by the rig from sim.load
let meteredS = sim.created_s;
let meteredMwh = 0;
function energyMwh() {
  // The board accumulates positive energy only (its setup): what the premises imports.
  const now = Math.floor(rigMs() / 1000);
  while (meteredS < now) meteredMwh += energiesInSecond(seed, loadCurve, meteredS++)[0];
  return meteredMwh;
}
new Ade7953(mcu.spi[0], mcu.gpio[pico.ade_cs], adeRegisters(energyMwh));

// --- running ---------------------------------------------------------------------------------------
let stopped = false;
let busyNs = 0; // emulated time the CPU spent running, not waiting
let wakeTimer = null;
let flushTimer = null;
function scheduleFlush() {
  if (!flushTimer) flushTimer = setImmediate(flush);
}
let lostReported = 0;
let hanLostReported = 0;
function flush() {
  flushTimer = null;
  if (uart0.lost > lostReported) {
    ctl(`log uart-loss lost=${uart0.lost - lostReported}`); // the supervisor adds these up in uart_lost
    lostReported = uart0.lost;
  }
  if (han.lost > hanLostReported) {
    ctl(`log han-uart-loss lost=${han.lost - hanLostReported}`);
    hanLostReported = han.lost;
  }
  if (han.tx.length) {
    const out = Buffer.from(han.tx.splice(0));
    try {
      if (hanTx !== null) fs.writeSync(hanTx, out);
    } catch {
      // the medium is not reading: the frame is lost, as on a radio nobody hears
    }
  }
  if (uart0.tx.length) {
    const out = Buffer.from(uart0.tx.splice(0));
    try {
      fs.writeSync(1, out);
    } catch {
      // the line is down: the bytes are lost, as on a cut cable
    }
  }
}
// Where the chip's clock may go up to now: the wall clock, less nothing once the carried
// backlog is caught up.
function wallNs() {
  return (performance.now() - wallAtBoot + carriedLagMs) * 1e6;
}
const SLICE_MS = 10;
// Idle time behind the wall clock (the backlog of computing slower than a Pico) is caught up at
// most CATCH_UP times the pace of the wall time spent idle. Unbounded, a chip waiting for the
// host skipped from timer to timer while the host's reply was on its way, and a millisecond of
// the host's turnaround became tens of milliseconds of Pico time (the bench's transfer paid it
// every window). Bounded, the host's wall time costs at most CATCH_UP times as much chip time,
// and the backlog still drains while the chip idles. Wall time spent computing earns nothing:
// the chip was not waiting then.
const CATCH_UP = 4;
const CATCH_UP_CARRY_NS = 2e6; // credit kept across a stretch of computing
let catchUpNs = 0; // idle time the chip may still pass
let catchUpAt = performance.now();
function catchUpBudget() {
  const t = performance.now();
  const earned = (t - catchUpAt) * 1e6 * CATCH_UP;
  catchUpNs = Math.min(catchUpNs + earned, Math.max(CATCH_UP_CARRY_NS, earned));
  catchUpAt = t;
  return catchUpNs;
}
function run() {
  wakeTimer = null;
  readCtl();
  saveRigClock(false);
  const sliceEnd = performance.now() + SLICE_MS;
  while (!stopped && power) {
    if (core.waiting) {
      const toAlarm = clock.nanosToNextAlarm;
      const wakeAt = toAlarm > 0 ? clock.nanos + toAlarm : Infinity; // the chip's own next timer
      const now = wallNs();
      let waitNs = wakeAt - now; // level with the wall clock: wait in wall time
      if (clock.nanos < now) {
        // Behind the wall clock: idle time passes, up to the timer or the wall, within budget.
        const step = Math.min(wakeAt, now) - clock.nanos;
        const allowed = Math.min(step, catchUpBudget());
        if (allowed > 0) {
          catchUpNs -= allowed;
          clock.tick(allowed);
        }
        if (!core.waiting || clock.nanos >= wakeAt) break; // the timer fired: run it (bytes from the host come in between slices)
        waitNs = allowed < step ? (step - allowed) / CATCH_UP : wakeAt - clock.nanos;
      }
      // Wait for the timer, a byte, or more budget.
      wakeTimer = setTimeout(run, Number.isFinite(waitNs) ? Math.max(waitNs / 1e6, 0.05) : 5);
      flush();
      return;
    } else {
      for (let i = 0; i < 2000 && !core.waiting && power; i++) {
        const ns = core.executeInstruction() * 1e9 / CPU_HZ;
        busyNs += ns;
        clock.tick(ns);
      }
      catchUpAt = performance.now();
    }
    if (performance.now() >= sliceEnd) break;
  }
  flush();
  if (!stopped && power) wakeTimer = setImmediate(run);
}
function wake() {
  if (wakeTimer !== null && core.waiting) {
    clearTimeout(wakeTimer);
    clearImmediate(wakeTimer);
    run();
  }
}
function stop() {
  if (stopped) return;
  stopped = true;
  saveRigClock(true);
  flush();
  ctl(`log pico rx_lost=${uart0.lost} rx=${uart0.delivered} han_rx_lost=${han.lost} flash_ops=${flashOps} emulated_ms=${Math.round(clock.nanos / 1e6)}`);
  // Everything this process owes is written synchronously by now (flash, line, control). Node's
  // exit would wait for the reads still pending on the ttys, so the chip goes dark at once.
  process.kill(process.pid, 'SIGKILL');
}

function reader(fd, onData) {
  const stream = fs.createReadStream(null, { fd, highWaterMark: 4096 });
  stream.on('data', onData);
  stream.on('error', () => {});
  return stream;
}
reader(0, uart0.receive);
if (hanRxArg) {
  // A pipe, read through libuv's event loop (a socket on the fd), not its thread pool.
  const hanRx = new net.Socket({ fd: parseInt(hanRxArg, 10), readable: true, writable: false });
  hanRx.on('data', han.receive);
  hanRx.on('error', () => {});
}
if (usbFd !== null) {
  reader(usbFd, (buf) => {
    usb.send(buf);
    wake();
  });
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
ctl(`log pico boot cause=${cause}`);
// METERFW_PICO_TRACE=1: each second, the share of emulated time the CPU ran, emulated time per
// wall time, and how far the chip's clock is behind the wall clock.
if (process.env.METERFW_PICO_TRACE) {
  let last = [0, 0, performance.now()];
  setInterval(() => {
    const [t0, b0, w0] = last;
    last = [clock.nanos, busyNs, performance.now()];
    const rate = (clock.nanos - t0) / 1e6 / (last[2] - w0);
    process.stderr.write(`[rig] busy=${((busyNs - b0) / (clock.nanos - t0)).toFixed(3)} emulated/wall=${rate.toFixed(3)} `
      + `lag=${Math.round((wallNs() - clock.nanos) / 1e6)} ms pc=${core.PC.toString(16)}\n`);
  }, 1000);
}
run();
