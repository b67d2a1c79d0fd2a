# A slot file as the application sees it: its header read, and the image mounted read-only at
# /app (vfs.mount(ImageVfs("/slots/a.mfw"), "/app")) so the application runs in place; the slot
# file is never unpacked. Resident while the application runs; the rest of the image format is
# image.py's.
import io
import struct
from micropython import const

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
