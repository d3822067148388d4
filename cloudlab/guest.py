"""What cloudlab and its guests agree on: the kernel command line, the console lines, the image names.

The image builders write guests that print these lines; the node controller boots them with this
command line; the client, the benchmarks and the tests wait for these lines. One home for each, so a
guest and the code that waits for it can never drift apart.
"""

from __future__ import annotations

#: ``console=ttyS0``: the serial port is the guest's console and carries the boot marker.
#: ``quiet``: every console byte is an emulated UART write; a silent kernel boots ~0.3 s sooner on TCG.
#: ``panic=-1``: reboot at once on a panic, so with ``-no-reboot``/``on_reboot=destroy`` a broken
#: guest ends instead of hanging. ``tsc=reliable no_timer_check``: skip clocksource checks that are
#: slow and pointless on emulated timers. ``8250.nr_uarts=1``: probe one UART, not four.
#: ``cryptomgr.notests``: skip the kernel's crypto self-tests, which are slow on TCG. Together these
#: four took the TCG boot to the marker from ~2.85 s to ~2.5 s on the development machine.
DEFAULT_KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1 tsc=reliable no_timer_check 8250.nr_uarts=1 cryptomgr.notests"

#: The line a guest prints once it is up (SSH listening); probes, the client and tests wait for it.
BOOT_MARKER = "cloudlab-boot: "
#: The line a guest prints when it begins a clean shutdown (power button, ``poweroff``, ``reboot``).
SHUTDOWN_MARKER = "cloudlab-shutdown: "

#: The name of the default machine image (``Name=cloudlab-default`` in DescribeImages).
DEFAULT_IMAGE_NAME = "cloudlab-default"
#: The name of the Debian image (``cloudlab image build debian``: Debian 12 with cloud-init, on a disk).
DEBIAN_IMAGE_NAME = "cloudlab-debian"
#: The first line a guest prints: how it was started ("cold boot", or "restored from template TPL" for a
#: guest restored from a booted template, in cloudlab-debian too).
LAUNCH_MARKER = "cloudlab-launch: "
#: What a booted template's init prints once it waits for its identity (``cloudlab.identity=channel``),
#: and the virtio-serial port it waits on; a restored guest answers :data:`IDENTITY_ACK` on that port.
TEMPLATE_WAITING_MARKER = "cloudlab-template: waiting for identity"
IDENTITY_PORT = "org.cloudlab.identity"
IDENTITY_ACK = "cloudlab-identity: ok"
#: The kernel command line option that makes a guest a booted template (it waits for its identity).
TEMPLATE_CMDLINE_OPTION = "cloudlab.identity=channel"
#: The line cloudlab-debian prints when cloud-init has run all its stages (its final_message).
CLOUD_INIT_DONE_MARKER = "cloudlab-cloud-init: done"


def has_booted(console: str | bytes) -> bool:
    """Whether a console log shows the boot marker (at the start of a line or after other output)."""
    marker = BOOT_MARKER.strip()
    return (marker.encode() if isinstance(console, bytes) else marker) in console
