"""Where an ordinary user may register an image from: their own folder under the images root.

``RegisterImage(ImageLocation=...)`` reads files on the cloud's host, and the cloud runs as root.
Taken as given, a location lets any user copy any host file into the image store (a ``vmlinuz``
that is a symbolic link to ``/etc/shadow``) and boot it, or read another user's uploads. So an
ordinary user registers only from ``<images root>/<user name>/...`` (``images_root`` in
``cloud.json``, by default ``<state>/uploads``); the administrator may still name any host path.

The rules, in the order they are checked:

- the location is a plain path: no ``file://`` (or any other scheme), no ``~``, no ``..`` segment,
  no NUL; a relative path is taken inside the user's own folder;
- the folder, once every link in it is resolved, lies inside the user's own folder (another user's
  folder, or anything outside the root, reads as inaccessible: EC2's ``InvalidManifest``);
- each image file is opened without following a final symbolic link (``O_NOFOLLOW``) and checked
  on the open descriptor (so a file swapped after the check is never read): a regular file, with
  a single hard link (a hard link to a host file is a copy of it the user did not make), no larger
  than the limit; it is then copied from that descriptor, never linked, so that changing the
  upload later cannot change the registered image.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cloudlab.errors import CloudError

DEFAULT_MAX_FILE_MB = 16384
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_COPY_CHUNK = 1024 * 1024


def _malformed(location: str, why: str) -> CloudError:
    return CloudError("InvalidParameterValue", f"ImageLocation {location[:200]!r} is not valid: {why}")


def _inaccessible(location: str, why: str) -> CloudError:
    return CloudError(
        "InvalidManifest",
        f"ImageLocation {location[:200]!r} cannot be used: {why}. Put the image's files (vmlinuz, "
        "initrd.img, disk.img) in a folder under your own upload folder",
    )


@dataclass(frozen=True)
class UploadPolicy:
    """The images root and the size limit for files that ordinary users register."""

    root: Path
    max_file_bytes: int = DEFAULT_MAX_FILE_MB * 1024 * 1024

    def folder_of(self, user: str) -> Path:
        """The user's own upload folder (``<root>/<user>``); user names never contain ``/``."""
        return self.root / user

    def resolve(self, user: str, location: str) -> Path:
        """The folder ``location`` names, checked to lie inside ``user``'s own upload folder."""
        if not location or "\0" in location:
            raise _malformed(location, "it must be the path of a folder")
        if _SCHEME_RE.match(location):
            raise _malformed(location, "give a plain path (no file:// or other scheme)")
        if location.startswith("~"):
            raise _malformed(location, "'~' is not expanded: give the folder's path")
        if ".." in Path(location).parts:
            raise _malformed(location, "'..' is not allowed in an image location")
        own = self.folder_of(user)
        candidate = Path(location) if Path(location).is_absolute() else own / location
        try:
            own_real = own.resolve(strict=True)
        except OSError:
            raise _inaccessible(location, f"your upload folder {own} does not exist (ask the administrator)") from None
        try:
            real = candidate.resolve(strict=True)
        except OSError:
            raise _inaccessible(location, "no such folder") from None
        if real != own_real and own_real not in real.parents:
            raise _inaccessible(location, f"it is not inside your upload folder {own}")
        if not real.is_dir():
            raise _inaccessible(location, "it is not a folder")
        return real

    @contextmanager
    def staged(
        self, folder: Path, names: dict[str, tuple[str, ...]], location: str, scratch_in: Path
    ) -> Iterator[dict[str, Path]]:
        """Copies of the image files found in ``folder`` (by role: the first of its ``names`` that
        exists), each checked on its open descriptor, in a private temporary folder under
        ``scratch_in`` (the image store, so that storing a copy is a link, not a second copy),
        removed afterwards. Roles with no file are absent."""
        scratch_in.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".upload-", dir=scratch_in) as scratch:
            os.chmod(scratch, 0o700)
            found: dict[str, Path] = {}
            for role, candidates in names.items():
                for name in candidates:
                    copied = self._copy_checked(folder / name, Path(scratch) / role, location)
                    if copied is not None:
                        found[role] = copied
                        break
            yield found

    def _copy_checked(self, source: Path, target: Path, location: str) -> Path | None:
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            # ELOOP: the final component is a symbolic link, which users may not hand in
            raise _inaccessible(location, f"{source.name} is a symbolic link or unreadable ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise _inaccessible(location, f"{source.name} is not a regular file")
            if info.st_nlink != 1:
                raise _inaccessible(location, f"{source.name} has {info.st_nlink} hard links (give a plain copy)")
            if info.st_size > self.max_file_bytes:
                raise CloudError(
                    "InvalidParameterValue",
                    f"{source.name} in ImageLocation is {info.st_size} bytes; the limit is {self.max_file_bytes}",
                )
            copied = 0
            with target.open("wb") as out:
                while chunk := handle.read(_COPY_CHUNK):
                    copied += len(chunk)
                    if copied > self.max_file_bytes:  # it grew while being read
                        raise CloudError(
                            "InvalidParameterValue", f"{source.name} grew past the limit of {self.max_file_bytes} bytes"
                        )
                    out.write(chunk)
        return target


def ensure_root(root: Path) -> None:
    """Create the images root if missing (its users' folders are made by the administrator)."""
    root.mkdir(parents=True, exist_ok=True)


__all__ = ["DEFAULT_MAX_FILE_MB", "UploadPolicy", "ensure_root"]
