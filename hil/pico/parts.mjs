// The parts around the emulated RP2040 on a meter board: the USB host's CDC port, the metrology
// front-end (ADE7953 on SPI) and the battery-backed RTC (RV-8803 on I2C). Each speaks the chip's
// real bus protocol to the stock firmware's drivers; nothing here knows about meterfw.
import { GPIOPinState, I2CMode } from 'rp2040js';

// --- the premises' load: boards/sim/metrology.py's energy functions (a test checks they agree) -----
// Integer arithmetic only, kept below 2^53 (and 32-bit products through Math.imul), so the
// numbers are the Python ones bit for bit.
function mix(seed, s) {
  let x = (Math.imul(s, 2654435761 | 0) + Math.imul(seed, 40503) + 12345) >>> 0;
  x = (x ^ (x >>> 13)) >>> 0;
  return Math.imul(x, 1103515245) >>> 0;
}

export function mwhInSecond(seed, s) {
  return 200 + ((mix(seed, s) >>> 8) % 401);
}

export function receivedMwhInSecond(seed, s) {
  if ((Math.floor(s / 10) + seed) % 3) return 0;
  let x = (Math.imul(s, 2246822519 | 0) + Math.imul(seed, 3266489) + 374761393) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 668265263) >>> 0;
  return (x >>> 8) % 301;
}

function levelW(points, sod, jitterPct, r) {
  const h = Math.floor(sod / 3600);
  const f = sod % 3600;
  const w = Math.floor((points[h] * (3600 - f) + points[(h + 1) % 24] * f) / 3600);
  return Math.floor((w * (100 - jitterPct + (r % (2 * jitterPct + 1)))) / 100);
}

// [delivered mWh, received mWh] in the whole second s; curve null is the `mixed` load.
export function energiesInSecond(seed, curve, s) {
  if (!curve) return [mwhInSecond(seed, s), receivedMwhInSecond(seed, s)];
  const sod = (((s + (curve.utc_offset_s || 0)) % 86400) + 86400) % 86400;
  const x = mix(seed, s);
  let netW = levelW(curve.load_w, sod, curve.load_jitter_pct || 0, x & 0xffff);
  if (curve.pv_w) netW -= levelW(curve.pv_w, sod, curve.pv_jitter_pct || 0, x >>> 16);
  return netW >= 0 ? [Math.floor((netW * 5) / 18), 0] : [0, Math.floor((-netW * 5) / 18)];
}

// --- USB: a CDC host that NAKs -------------------------------------------------------------------
// rp2040js's own CDC host answers an armed OUT endpoint with an empty packet 10 us later when it
// has nothing to send, and the firmware then spends two thirds of its time in USB interrupts. A
// real host NAKs until it has data: this one keeps the read pending until bytes arrive.
const DESC_CONFIGURATION = 2;
const CONFIG_DESC_SIZE = 9;

function setupPacket(bmRequestType, bRequest, wValue, wIndex, wLength) {
  return new Uint8Array([bmRequestType, bRequest, wValue & 0xff, wValue >> 8, wIndex & 0xff, wIndex >> 8,
    wLength & 0xff, wLength >> 8]);
}

function cdcEndpoints(desc) {
  const ep = { in: -1, out: -1 };
  let dataInterface = false;
  for (let i = 0; i + 1 < desc.length && desc[i] >= 2; i += desc[i]) {
    const len = desc[i];
    const type = desc[i + 1];
    if (type === 4 && len === 9) dataInterface = desc[i + 4] === 2 && desc[i + 5] === 10; // CDC data
    if (dataInterface && type === 5 && len === 7 && (desc[i + 3] & 3) === 2) {
      if (desc[i + 2] & 0x80) ep.in = desc[i + 2] & 0xf;
      else ep.out = desc[i + 2] & 0xf;
    }
  }
  return ep;
}

export class CdcHost {
  constructor(usb) {
    this.usb = usb;
    this.toDevice = [];
    this.pendingRead = 0; // size of the OUT transfer the device has armed, 0 when none
    this.descSize = null;
    this.desc = [];
    this.ep = { in: -1, out: -1 };
    this.ready = false;
    this.onSerialData = null;
    usb.onUSBEnabled = () => usb.resetDevice();
    usb.onResetReceived = () => usb.sendSetupPacket(setupPacket(0x00, 5, 1, 0, 0)); // SET_ADDRESS 1
    usb.onEndpointWrite = (endpoint, buffer) => this.fromDevice(endpoint, buffer);
    usb.onEndpointRead = (endpoint, size) => {
      if (endpoint !== this.ep.out) return;
      this.pendingRead = size;
      this.pump();
    };
  }

  fromDevice(endpoint, buffer) {
    const usb = this.usb;
    if (endpoint === 0 && buffer.length === 0) {
      if (this.descSize === null) {
        usb.sendSetupPacket(setupPacket(0x80, 6, DESC_CONFIGURATION << 8, 0, CONFIG_DESC_SIZE));
      } else if (!this.ready) {
        // SET_CONTROL_LINE_STATE with DTR and RTS: a terminal has the port open
        usb.sendSetupPacket(setupPacket(0x21, 0x22, 3, 0, 0));
        this.ready = true;
      }
    } else if (endpoint === 0 && buffer.length > 1) {
      if (this.descSize === null && buffer.length === CONFIG_DESC_SIZE && buffer[1] === DESC_CONFIGURATION) {
        this.descSize = buffer[2] | (buffer[3] << 8);
        usb.sendSetupPacket(setupPacket(0x80, 6, DESC_CONFIGURATION << 8, 0, this.descSize));
      } else if (this.descSize !== null && this.desc.length < this.descSize) {
        this.desc.push(...buffer);
        if (this.desc.length >= this.descSize) {
          this.ep = cdcEndpoints(this.desc);
          usb.sendSetupPacket(setupPacket(0x00, 9, 1, 0, 0)); // SET_CONFIGURATION 1
        }
      }
    } else if (endpoint === this.ep.in && this.onSerialData) {
      this.onSerialData(Buffer.from(buffer));
    }
  }

  send(bytes) {
    for (const b of bytes) this.toDevice.push(b);
    this.pump();
  }

  pump() {
    if (!this.pendingRead || !this.toDevice.length) return;
    const n = Math.min(this.pendingRead, this.toDevice.length);
    this.pendingRead = 0;
    this.usb.endpointReadDone(this.ep.out, Uint8Array.from(this.toDevice.splice(0, n)));
  }
}

// --- the metrology front-end: ADE7953 on SPI ----------------------------------------------------
// A frame is: address high, address low, 0x80 to read or 0 to write, then the register's bytes,
// MSB first, while chip select is low. The width is in the address: 0x1xx 16-bit, 0x2xx 24-bit,
// 0x3xx 32-bit (the 24-bit registers again), others 8-bit.
function regWidth(reg) {
  const page = reg >> 8;
  return page >= 1 && page <= 3 ? page + 1 : 1;
}

const AENERGYA = 0x21e;

const LAST_OP = 0x0fd; // the kind of the last successful communication: 0x35 read, 0xca write

export function adeRegisters(energyMwh) {
  const stored = new Map();
  let lastOp = 0;
  const value = (reg) => {
    if (reg === LAST_OP) return lastOp;
    if ((reg & 0xff) === (AENERGYA & 0xff) && (reg >> 8) >= 2) {
      const mask = reg >> 8 === 2 ? 0xffffff : 0xffffffff; // read without reset (LCYCMODE)
      return energyMwh() % (mask + 1);
    }
    return stored.get(reg) || 0;
  };
  return {
    read(reg) {
      const v = value(reg);
      lastOp = 0x35;
      return v;
    },
    write(reg, v) {
      stored.set(reg, v);
      lastOp = 0xca;
    },
  };
}

export class Ade7953 {
  constructor(spi, csPin, regs) {
    this.regs = regs;
    this.frame = [];
    this.out = [];
    this.selected = false;
    csPin.addListener((state) => {
      const low = state === GPIOPinState.Low;
      if (this.selected && !low) this.end();
      if (low && !this.selected) {
        this.frame = [];
        this.out = [];
      }
      this.selected = low;
    });
    spi.onTransmit = (value) => spi.completeTransmit(this.byte(value));
  }

  byte(value) {
    if (!this.selected) return 0xff;
    const f = this.frame;
    f.push(value);
    if (f.length === 3 && f[2] & 0x80) {
      const reg = (f[0] << 8) | f[1];
      const n = regWidth(reg);
      const v = this.regs.read(reg);
      for (let i = n - 1; i >= 0; i--) this.out.push(Math.floor(v / 2 ** (8 * i)) & 0xff);
    }
    if (f.length > 3 && f[2] & 0x80) return this.out.length ? this.out.shift() : 0;
    return 0;
  }

  end() {
    const f = this.frame;
    if (f.length > 3 && !(f[2] & 0x80)) {
      const reg = (f[0] << 8) | f[1];
      let v = 0;
      for (const b of f.slice(3, 3 + regWidth(reg))) v = v * 256 + b;
      this.regs.write(reg, v);
    }
  }
}

// --- the RTC: RV-8803 on I2C ---------------------------------------------------------------------
// Registers 0x10-0x17: hundredths, seconds, minutes, hours, weekday (one bit), date, month, year,
// in BCD. Writing the seconds clears the hundredths. The time is the rig's clock plus an
// adjustment that a set changes; the adjustment is kept outside the chip, like its battery.
const bcd = (n) => ((n / 10) | 0) * 16 + (n % 10);
const unbcd = (b) => (b >> 4) * 10 + (b & 0xf);

export class Rv8803 {
  constructor(i2c, address, rigMs, loadAdjust, storeAdjust) {
    this.address = address;
    this.rigMs = rigMs;
    this.adjustMs = loadAdjust();
    this.storeAdjust = storeAdjust;
    this.ptr = 0;
    this.writing = null; // bytes written in this transaction, after the pointer
    this.regs = null; // a snapshot taken when a read starts, as the chip latches its counters
    this.selected = false;
    i2c.onStart = () => i2c.completeStart();
    i2c.onConnect = (addr, mode) => {
      this.selected = addr === this.address;
      if (this.selected && mode === I2CMode.Read) this.regs = this.snapshot();
      if (this.selected && mode === I2CMode.Write) this.writing = [];
      i2c.completeConnect(this.selected);
    };
    i2c.onWriteByte = (b) => {
      if (this.writing && this.writing.first === undefined) {
        this.writing.first = true;
        this.ptr = b;
      } else if (this.writing) {
        this.writing.push([this.ptr++, b]);
      }
      i2c.completeWrite(true);
    };
    i2c.onReadByte = () => {
      const v = this.regs ? this.regs[this.ptr] ?? 0 : 0;
      this.ptr = (this.ptr + 1) & 0xff;
      i2c.completeRead(v);
    };
    i2c.onStop = () => {
      if (this.writing && this.writing.length) this.set(this.writing);
      this.writing = null;
      i2c.completeStop();
    };
  }

  nowMs() {
    return this.rigMs() + this.adjustMs;
  }

  snapshot() {
    const ms = this.nowMs();
    const d = new Date(ms);
    const r = [];
    r[0x10] = bcd(Math.floor((ms % 1000) / 10));
    r[0x11] = bcd(d.getUTCSeconds());
    r[0x12] = bcd(d.getUTCMinutes());
    r[0x13] = bcd(d.getUTCHours());
    r[0x14] = 1 << d.getUTCDay();
    r[0x15] = bcd(d.getUTCDate());
    r[0x16] = bcd(d.getUTCMonth() + 1);
    r[0x17] = bcd(d.getUTCFullYear() % 100);
    return r;
  }

  set(writes) {
    const r = this.snapshot();
    for (const [reg, v] of writes) r[reg] = v;
    if (!writes.some(([reg]) => reg >= 0x11 && reg <= 0x17)) return;
    const ms = Date.UTC(2000 + unbcd(r[0x17]), unbcd(r[0x16]) - 1, unbcd(r[0x15]), unbcd(r[0x13]),
      unbcd(r[0x12]), unbcd(r[0x11]));
    this.adjustMs = ms - this.rigMs();
    this.storeAdjust(this.adjustMs);
  }
}
