"""How a node starts an instance from a booted template (mixed into the node controller).

Kept apart from :mod:`cloudlab.nc.node` (which boots) so that each stays small: which template an instance
may be restored from, where its identity port listens, and the fall-back to a cold boot when a restore fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

import libvirt

from cloudlab import contract as c
from cloudlab.nc.domain_xml import DomainSpec, build_domain_xml
from cloudlab.nc.states import vanished
from cloudlab.nc.templates import Launcher, Template, TemplateError

log = logging.getLogger(__name__)


def fresh_root(disks: tuple[c.DiskPlan, ...]) -> dict[str, Any]:
    """``root_backing``/``root_gib`` of a DomainSpec when the root volume (vda) was made for this start from an
    image's disk the node can read (the same file the storage controller made it from): nothing else."""
    for disk in disks:
        if disk.device == "vda" and disk.fresh_from and disk.size_gib > 0 and Path(disk.fresh_from).is_file():
            return {"root_backing": Path(disk.fresh_from), "root_gib": disk.size_gib}
    return {}


class NodeLaunch:
    """The node controller's restores (see :class:`cloudlab.nc.templates.Launcher`)."""

    name: str
    conn: Any
    node_dir: Path
    launcher: Launcher | None

    def _template_for(self, spec: DomainSpec) -> Template | None:
        """The booted template to restore ``spec`` from, if one is ready (else it boots cold)."""
        if self.launcher is None:
            return None
        if len(str(self._identity_socket(spec.instance_id))) > 107:  # what a unix socket's path holds
            log.info("node %s: %s boots cold: the state path is too long for a socket", self.name, spec.instance_id)
            return None
        return self.launcher.template_for(spec)

    def _identity_socket(self, instance_id: str) -> Path:
        """Where QEMU listens for a restored instance's identity (short: a socket's path holds 107 bytes)."""
        folder = self.node_dir / "id"
        folder.mkdir(exist_ok=True)
        return folder / instance_id

    def _restore(self, dom: Any, spec: DomainSpec, template: Template) -> Any:
        """Restore ``dom`` from ``template``; if that fails, boot it cold after all (a launch never fails for it)."""
        assert self.launcher is not None
        try:
            self.launcher.restore(dom, spec, template)
            return dom
        except (TemplateError, libvirt.libvirtError) as exc:
            if isinstance(exc, libvirt.libvirtError) and vanished(exc):
                raise  # terminated meanwhile: booting it cold would define it again
            what = (self.name, spec.instance_id, template.name, exc)
            log.warning("node %s: %s not restored from %s (%s): booting it cold", *what)
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        spec.console_log.write_bytes(b"")
        cold = dataclasses.replace(spec, incoming=False, identity_socket=None, memory_file=None, uuid=dom.UUIDString())
        dom = self.conn.defineXML(build_domain_xml(cold))
        dom.create()
        return dom
