# Device side of the .mfw image format (see host_tools/meterfw/image.py for the layout): a slot
# file's header, its image mounted read-only at /app so the application runs in place and the slot
# file is never unpacked, the manifest's fields and their checks, and the payload's hash. Resident
# while the application runs (dropping it after the boot left the heap too broken up for a verify
# after a reboot).
import hashlib
import io
import json
import struct
from micropython import const
from bootloader.protocol import U32_MAX

_MAGIC = b"MFW1"
_HDR_LEN = const(8)
_SIG_LEN = const(73)  # role u8, key_id 8, Ed25519 signature 64
_ENTRY_LEN = const(8)  # u32 offset, u32 length
_S_IFDIR = const(0x4000)
_S_IFREG = const(0x8000)
_ENOENT = const(2)
_ENOTDIR = const(20)
_EISDIR = const(21)
_EROFS = const(30)
_ST_RDONLY = const(1)
_BLOCK = const(4096)


def read_header(f):
    # Returns (manifest_bytes, [(role, key_id, sig)], payload_off); the caller parses and
    # verifies the manifest, so this stays allocation-light and crypto-free.
    hdr = bytearray(_HDR_LEN)
    f.seek(0)
    if f.readinto(hdr) != _HDR_LEN:
        raise ValueError("bad image: truncated header")
    if hdr[:4] != _MAGIC:
        raise ValueError("bad image: wrong magic")
    manifest_len = hdr[4] | (hdr[5] << 8)
    n = hdr[6] * _SIG_LEN
    end = f.seek(0, 2)  # lengths checked before a read allocates for them (a 64 KB claim)
    if end < _HDR_LEN + manifest_len:
        raise ValueError("bad image: truncated manifest")
    if end < _HDR_LEN + manifest_len + n:
        raise ValueError("bad image: truncated signatures")
    f.seek(_HDR_LEN)
    manifest = f.read(manifest_len)
    raw = f.read(n)
    sigs = []
    for i in range(0, len(raw), _SIG_LEN):
        sigs.append((raw[i], raw[i + 1 : i + 9], raw[i + 9 : i + _SIG_LEN]))
    return manifest, sigs, _HDR_LEN + manifest_len + len(raw)


class ImageVfs:
    # Read-only user VFS over one slot file: vfs.mount(ImageVfs("/slots/a.mfw"), "/app").
    # The file table is read once; opened files are served from the slot file at their offset.

    def __init__(self, path):
        f = open(path, "rb")
        try:
            self._files, self._dirs, self._size = read_table(f)
        except (OSError, ValueError):
            f.close()
            raise
        self._f = f
        self._cwd = ""  # relative to the mount point, no leading "/"

    def _norm(self, path):
        # Absolute paths arrive relative to the mount point ("/x.mpy"); relative ones are
        # passed through untouched by the VFS layer when the cwd is inside this mount.
        if path[:1] != "/":
            path = self._cwd + "/" + path
        parts = []
        for p in path.split("/"):
            if p == "..":
                if parts:
                    parts.pop()
            elif p and p != ".":
                parts.append(p)
        return "/".join(parts)

    def _dir(self, path):
        d = self._norm(path)
        if d in self._files:
            raise OSError(_ENOTDIR)
        if d and d not in self._dirs:
            raise OSError(_ENOENT)
        return d

    def mount(self, readonly, mkfs):
        if mkfs:
            raise OSError(_EROFS)

    def umount(self):
        self._f.close()

    def stat(self, path):
        name = self._norm(path)
        entry = self._files.get(name)
        if entry is not None:
            return (_S_IFREG, 0, 0, 0, 0, 0, entry[1], 0, 0, 0)
        if not name or name in self._dirs:
            return (_S_IFDIR, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        raise OSError(_ENOENT)

    def ilistdir(self, path):
        d = self._dir(path)
        prefix = d + "/" if d else ""
        seen = []
        for name, entry in self._files.items():
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            cut = rest.find("/")
            if cut < 0:
                yield (rest, _S_IFREG, 0, entry[1])
            elif rest[:cut] not in seen:
                seen.append(rest[:cut])
                yield (rest[:cut], _S_IFDIR, 0, 0)

    def open(self, path, mode):
        for c in "wax+":
            if c in mode:
                raise OSError(_EROFS)
        name = self._norm(path)
        entry = self._files.get(name)
        if entry is None:
            raise OSError(_EISDIR if not name or name in self._dirs else _ENOENT)
        self._f.seek(entry[0])
        data = self._f.read(entry[1])
        if len(data) != entry[1]:
            raise OSError(_ENOENT)
        # BytesIO/StringIO over an immutable bytes object reference it rather than copy it.
        return io.BytesIO(data) if "b" in mode else io.StringIO(data)

    def chdir(self, path):
        self._cwd = self._dir(path)

    def getcwd(self):
        return "/" + self._cwd

    def statvfs(self, path):
        return (_BLOCK, _BLOCK, (self._size + _BLOCK - 1) // _BLOCK, 0, 0, len(self._files), 0, 0, _ST_RDONLY, 255)

    def _rofs(self, *args):
        raise OSError(_EROFS)

    remove = rename = mkdir = rmdir = _rofs


def read_table(f):
    # -> ({name: (absolute offset, length)}, {directory names}, file size). Bounds are checked
    # against the file here so open() can trust its entries.
    _, _, payload_off = read_header(f)
    size = f.seek(0, 2)
    buf = bytearray(255 + _ENTRY_LEN)
    mv = memoryview(buf)
    f.seek(payload_off)
    if f.readinto(mv[:2]) != 2:
        raise ValueError("bad image: truncated file table")
    count = buf[0] | (buf[1] << 8)
    files = {}
    dirs = set()
    for _ in range(count):
        if f.readinto(mv[:1]) != 1:
            raise ValueError("bad image: truncated file table")
        n = buf[0]
        if not n or f.readinto(mv[: n + _ENTRY_LEN]) != n + _ENTRY_LEN:
            raise ValueError("bad image: truncated file table")
        name = str(mv[:n], "utf-8")
        off, length = struct.unpack_from("<II", buf, n)
        off += payload_off
        if off + length > size:
            raise ValueError("bad image: file out of range")
        files[name] = (off, length)
        cut = name.rfind("/")
        while cut > 0:
            name = name[:cut]
            dirs.add(name)
            cut = name.rfind("/")
    return files, dirs, size


# A manifest's fields and their kinds, as host_tools' image.py writes them: "v" a version X.Y.Z,
# "u" an integer 0..2^32-1 (what boot control and the slot store), "h" 64 hex digits, "n" a
# module name, "k" an image kind, "s" any string.
_FIELDS = (("format", "u"), ("board", "s"), ("version", "v"), ("security_version", "u"),
           ("payload_size", "u"), ("payload_sha256", "h"), ("min_bootloader", "v"), ("entry", "n"),
           ("build_time", "u"), ("mpy", "s"), ("kind", "k"), ("api", "u"))
KINDS = ("firmware", "bootloader")


def version_tuple(v):
    return tuple(int(x) for x in v.split("."))


def below_floor(m, floor):
    """An image no path may run (anti-rollback): its security version is below the floor."""
    return m["security_version"] < floor


def _ok(kind, v):
    if kind == "u":
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= U32_MAX
    if not isinstance(v, str) or not v or len(v) > 64:
        return False
    if kind == "k":
        return v in KINDS
    if kind == "v":
        parts = v.split(".")
        return len(parts) == 3 and all(p and len(p) < 6 and p.isdigit() for p in parts)
    if kind == "h":
        return len(v) == 64 and all(c in "0123456789abcdef" for c in v)
    if kind == "n":
        return not v[0].isdigit() and all(c == "_" or c.isalpha() or c.isdigit() for c in v)
    return True


def parse_manifest(raw):
    """The manifest dict from its bytes, every field of the kind the format says; ValueError
    otherwise, whatever the bytes (from a slot or from the wire): no reader of a manifest meets
    a missing key or a value of the wrong type."""
    try:
        m = json.loads(raw)
    except Exception:  # not JSON, not UTF-8, or nested past the parser's depth
        raise ValueError("bad image: manifest is not JSON")
    if not isinstance(m, dict):
        raise ValueError("bad image: manifest is not a JSON object")
    for key, kind in _FIELDS:
        if not _ok(kind, m.get(key)):
            raise ValueError("bad image: manifest field %s is missing or malformed" % key)
    return m


def _hash_steps(f, off, size, buf):
    """SHA-256 of `size` bytes of `f` from `off`, read a `buf` (the caller's, so hashing a slot
    allocates nothing per chunk) at a time: yields None after each chunk, then the digest."""
    h = hashlib.sha256()
    mv = memoryview(buf)
    done = 0
    while done < size:
        f.seek(off + done)  # another task may have moved the file position while we paused
        left = size - done
        # Slicing a memoryview allocates, so only a final short chunk pays for it.
        n = f.readinto(mv if left >= len(mv) else mv[:left])
        if not n:
            raise ValueError("bad image: truncated payload")
        h.update(mv if n == len(mv) else mv[:n])
        done += n
        yield
    yield h.digest()


def payload_sha256(f, off, size, buf):
    for d in _hash_steps(f, off, size, buf):
        pass
    return d


async def payload_sha256_async(f, off, size, buf):
    """payload_sha256 that lets other tasks run between chunks: metering keeps its deadlines
    while a slot is verified."""
    import asyncio  # the application's and the boot's selection have it loaded by now

    for d in _hash_steps(f, off, size, buf):
        if d is None:
            await asyncio.sleep_ms(0)
    return d
