"""A guest's device state saved to a file and loaded into another guest, through QEMU's migration (QMP).

Templates (``templates.py``) are built on this: the state is saved without the guest's RAM, which lives
in a file of its own that each restored guest maps copy-on-write. Kept apart from the templates' policy
(which template, when, where) because it is only the QEMU mechanics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu

from cloudlab.waiting import wait_until

SAVE_TIMEOUT_S = 60.0


class TemplateError(Exception):
    """A template could not be built or restored (the launch then boots cold)."""


def _qmp(dom: libvirt.virDomain, command: str, files: list[int] | None = None, **arguments: Any) -> Any:
    """One QMP command on the domain's monitor (with file descriptors to pass), its ``return``."""
    text = json.dumps({"execute": command, "arguments": arguments} if arguments else {"execute": command})
    if files:
        reply, _ = libvirt_qemu.qemuMonitorCommandWithFiles(dom, text, files, 0)
    else:
        reply = libvirt_qemu.qemuMonitorCommand(dom, text, 0)
    answer = json.loads(reply)
    if "error" in answer:
        raise TemplateError(f"QEMU {command}: {answer['error'].get('desc', answer['error'])}")
    return answer.get("return")


def _migration_done(dom: libvirt.virDomain) -> bool:
    status = (_qmp(dom, "query-migrate") or {}).get("status")
    if status in ("failed", "cancelled"):
        raise TemplateError(f"migration {status}")
    return status == "completed"


def _ignore_shared_ram(dom: libvirt.virDomain) -> None:
    """Leave RAM in a file out of the stream: the template's RAM is its file already (``share=on``), and a
    restored instance maps that file (``share=off``) instead of reading its pages from the stream. Both
    ends must say so (it changes the stream's format)."""
    _qmp(dom, "migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])


def save_state(dom: libvirt.virDomain, path: Path) -> None:
    """Write ``dom``'s device state (a QEMU migration stream without the RAM) to ``path``; QEMU stops the
    guest for the last pass.

    The guest is *not* paused first: the stream records the run state it was taken in, and a guest saved
    paused would stay paused where it is restored, whatever the restore asks (QEMU's ``autostart`` only
    applies to a stream taken from a running guest). Its RAM is not in the stream, so there is nothing
    to converge: the migration ends at once.
    """
    _ignore_shared_ram(dom)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _qmp(dom, "getfd", [fd], fdname="cloudlab-template")
    finally:
        os.close(fd)
    _qmp(dom, "migrate-set-parameters", **{"max-bandwidth": 1 << 40})  # no RAM to send: one pass, no limit
    _qmp(dom, "migrate", uri="fd:cloudlab-template")
    wait_until(lambda: _migration_done(dom), SAVE_TIMEOUT_S, what="the template's state saved", interval_s=0.02)


def restore_state(dom: libvirt.virDomain, path: Path) -> None:
    """Feed a started ``-incoming defer`` domain the state in ``path`` and let it run once loaded (its RAM is the
    template's file, mapped copy-on-write: nothing of it is read before the guest touches it)."""
    _ignore_shared_ram(dom)
    fd = os.open(path, os.O_RDONLY)
    try:
        _qmp(dom, "getfd", [fd], fdname="cloudlab-template")
    finally:
        os.close(fd)
    _qmp(dom, "migrate-incoming", uri="fd:cloudlab-template")
    # ``cont`` while the stream is still loading tells QEMU to run the guest the moment it is loaded (its
    # ``autostart``), so no round trip through libvirt waits for it; a stream that fails to load leaves
    # the guest stopped, which the identity handover then notices (and :func:`check_restored` tells).
    # libvirt's own start of the domain sent a ``cont`` already, so a small stream may be loaded and the
    # guest running before this one arrives: libvirt then refuses it ("already running"), which is fine
    try:
        dom.resume()
    except libvirt.libvirtError:
        if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            raise


def check_restored(dom: libvirt.virDomain) -> None:
    """Raise if the template's state did not load (after the guest answered, this is one quick question)."""
    if not _migration_done(dom):
        raise TemplateError("the template's state is not loaded")


def punch_zero_pages(path: Path, page: int = 1 << 16) -> int:
    """Turn the RAM file's zeroed runs back into holes (``init_on_free`` zeroes what the kernel freed, so
    most of a booted guest's RAM is written zeros): less disk and page cache; a hole reads as zeros.
    Returns the bytes left allocated."""
    zero = bytes(page)
    used = 0
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        for offset in range(0, size, page):
            if os.pread(fd, page, offset) == zero:
                fallocate(fd, offset, page)
            else:
                used += page
    finally:
        os.close(fd)
    return used


def fallocate(fd: int, offset: int, length: int) -> None:
    """``fallocate(PUNCH_HOLE | KEEP_SIZE)``; where the file system cannot, the zeros stay (no harm)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate(fd, 0x02 | 0x01, ctypes.c_long(offset), ctypes.c_long(length))
