"""What every area of the ``cloudlab`` command shares: its error, argument types, the state folder, tables."""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from cloudlab.clc.offline import StateAdmin, StateError, open_state
from cloudlab.clc.regions import check_region
from cloudlab.errors import CloudError
from cloudlab.paths import StateLayout, find_state_dir

T = TypeVar("T")


class CliError(Exception):
    """An error for the user: printed as one line, exit status 1."""


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def region(text: str) -> str:
    try:
        return check_region(text)
    except CloudError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535; 0 picks a free one)")
    return value


def controller_url(text: str) -> str:
    """A controller URL (``http://HOST:PORT``), checked before anything starts."""
    from cloudlab.rpc import parse_controller_url

    try:
        parse_controller_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def listen_address(text: str) -> tuple[str, int]:
    """``HOST`` or ``HOST:PORT`` (port 0, or none: any free one), checked before anything starts."""
    host, sep, number = text.rpartition(":")
    if not sep:
        host, number = text, "0"
    if not host or "/" in host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST or HOST:PORT")
    return host, port(number)


def identity_name(text: str) -> str:
    """A controller's name (it becomes a certificate subject and folder names), checked before anything starts."""
    from cloudlab.security.ca import validate_name

    try:
        return validate_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def hypervisor(text: str) -> str:
    if not text.startswith(("qemu:///embed", "qemu:///system", "qemu:///session", "test://")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a supported libvirt URI: use qemu:///embed (default), qemu:///system or test:///default"
        )
    return text


def state_layout(args: argparse.Namespace) -> StateLayout:
    return StateLayout(find_state_dir(getattr(args, "state", None)))


@contextlib.contextmanager
def state_admin(layout: StateLayout, *, need_ca: bool = True) -> Iterator[StateAdmin]:
    """The cloud's users, quotas and images from its state folder (cloud up or down), or a one-line error."""
    try:
        with open_state(layout, need_ca=need_ca) as admin:
            yield admin
    except StateError as exc:
        raise CliError(str(exc)) from None


def writing(what: str, path: Path, write: Callable[[], T]) -> T:
    """Run ``write`` (which writes ``what`` into the folder ``path``); an OSError becomes one line naming the
    path. A folder argument that names a file (``--out /etc/passwd``) fails when the folder is made, before
    anything is written, so the file is never touched."""
    try:
        return write()
    except OSError as exc:
        if isinstance(exc, FileExistsError | NotADirectoryError):
            blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
            reason = f"{blocker} is a file, not a folder" if blocker else exc.strerror
        else:
            reason = exc.strerror or str(exc)
        raise CliError(f"cannot write {what} to {path}: {reason}") from None


def print_table(rows: list[dict[str, Any]], empty: str) -> None:
    if not rows:
        print(empty)
        return
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0]}
    print("  ".join(k.upper().ljust(w) for k, w in widths.items()).rstrip())
    for row in rows:
        print("  ".join(str(row[k]).ljust(w) for k, w in widths.items()).rstrip())


def when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def log_to_stderr(verbose: bool) -> None:
    """Log lines of a foreground controller (``serve``, ``nc``) on stderr."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def make_folder(what: str, path: Path) -> Path:
    """``path`` made (with its parents) as a folder for ``what``, or a one-line error naming it."""
    return writing(what, path, lambda: path.mkdir(parents=True, exist_ok=True) or path)
