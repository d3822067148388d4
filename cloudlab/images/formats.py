"""Two small file formats the default image builder reads and writes, in pure Python.

* :class:`Elf`: just enough of ELF64 to list a program's shared libraries (``DT_NEEDED``), its
  loader (``PT_INTERP``) and a kernel module's dependencies (``.modinfo``), so the image does not
  depend on ``ldd`` or ``depmod`` or on what happens to be installed on the host;
* :class:`Cpio`: an in-memory newc archive (the initramfs format), deterministic and able to hold
  device nodes without root.
"""

from __future__ import annotations

import io
import stat
import struct

from cloudlab.images.apt import ImageBuildError


class Elf:
    """Just enough of ELF64 little-endian to read DT_NEEDED, PT_INTERP and ``.modinfo``."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ImageBuildError("not an ELF64 little-endian file in the extracted packages; report this bug")
        self.data = data
        (_, _, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, shstrndx) = struct.unpack_from(
            "<16sHHIQQQIHHHHHH", data, 0
        )
        self.sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        self.interpreter = ""
        for i in range(phnum):
            p_type, _, p_offset, _, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
            if p_type == 3:  # PT_INTERP
                self.interpreter = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
        self._shstr = self.sections[shstrndx] if shnum else None

    def _string(self, section: tuple, offset: int) -> str:
        start = section[4] + offset
        return self.data[start : self.data.index(b"\0", start)].decode()

    def _section_named(self, name: str) -> tuple | None:
        if self._shstr is None:
            return None
        for section in self.sections:
            if self._string(self._shstr, section[0]) == name:
                return section
        return None

    def needed(self) -> list[str]:
        """Sonames from the dynamic section (empty for static programs)."""
        result = []
        for section in self.sections:
            if section[1] != 6:  # SHT_DYNAMIC
                continue
            strtab = self.sections[section[6]]
            for off in range(section[4], section[4] + section[5], 16):
                tag, value = struct.unpack_from("<qQ", self.data, off)
                if tag == 0:
                    break
                if tag == 1:  # DT_NEEDED
                    result.append(self._string(strtab, value))
        return result

    def module_depends(self) -> list[str]:
        """The ``depends=`` entry of a kernel module's ``.modinfo`` section."""
        section = self._section_named(".modinfo")
        if section is None:
            return []
        for entry in self.data[section[4] : section[4] + section[5]].split(b"\0"):
            if entry.startswith(b"depends="):
                return [d.replace("-", "_") for d in entry[8:].decode().split(",") if d]
        return []


class Cpio:
    """An in-memory newc archive: deterministic (fixed times, root owner) and needs no root to make
    device nodes, which is why the builder does not stage a directory tree for the ``cpio`` tool."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, bytes, int, int]] = {}  # path -> (mode, data, rmajor, rminor)

    def has(self, path: str) -> bool:
        return path.strip("/") in self._entries

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            self._entries.setdefault(parent, (stat.S_IFDIR | 0o755, b"", 0, 0))

    def _put(self, path: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        path = path.strip("/")
        self._parents(path)
        self._entries[path] = (mode, data, *rdev)

    def add_dir(self, path: str, perm: int = 0o755) -> None:
        self._put(path, stat.S_IFDIR | perm)

    def add_file(self, path: str, data: bytes, perm: int) -> None:
        self._put(path, stat.S_IFREG | perm, data)

    def add_symlink(self, path: str, target: str) -> None:
        self._put(path, stat.S_IFLNK | 0o777, target.encode())

    def add_device(self, path: str, mode: int, major: int, minor: int) -> None:
        self._put(path, mode, b"", (major, minor))

    def pack(self) -> bytes:
        """Serialise with parents before children, ending with the TRAILER!!! record."""
        out = io.BytesIO()
        for ino, (path, (mode, data, rmajor, rminor)) in enumerate(sorted(self._entries.items()), start=1):
            nlink = 2 if stat.S_ISDIR(mode) else 1
            cpio_record(out, path, ino, mode, nlink, data, rmajor, rminor)
        cpio_record(out, "TRAILER!!!", 0, 0, 1, b"", 0, 0)
        return out.getvalue()


def cpio_record(out: io.BytesIO, name: str, ino: int, mode: int, nlink: int, data: bytes, rmaj: int, rmin: int) -> None:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(encoded), 0)
    out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
    out.write(b"\0" * (-(110 + len(encoded)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))
