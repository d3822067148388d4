"""Machine images: ``image build`` (from Debian packages, cached) and ``image list``."""

from __future__ import annotations

import argparse
import json
import sys

from cloudlab.cli.common import CliError, print_table, state_admin, state_layout
from cloudlab.cli.registry import arg, command, group

group("image", help="build and list machine images")


@command(
    "image build",
    help="build an image from Debian packages (cached); the default one is registered",
    args=[
        arg(
            "name",
            nargs="?",
            default="default",
            choices=["default", "debian"],
            help="default: busybox in RAM (cloudlab-default); debian: Debian 12 with cloud-init (cloudlab-debian)",
        ),
        arg("--force", action="store_true", help="rebuild even if the cached image is current"),
        arg("--quiet", action="store_true", help="no progress lines"),
    ],
)
def image_build(args: argparse.Namespace) -> int:
    from cloudlab.images.build import ImageBuildError, build_default_image
    from cloudlab.images.debian import IMAGE_NAME, build_debian_image

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"  {message}", file=sys.stderr)

    build = build_debian_image if args.name == "debian" else build_default_image
    try:
        built = build(force=args.force, progress=progress)
    except ImageBuildError as exc:
        raise CliError(str(exc)) from None
    verb = "built" if built.rebuilt else "up to date"
    if args.name == "debian":
        print(f"{IMAGE_NAME} {verb}: {built.kernel} + {built.ramdisk} + {built.disk}")
    else:
        print(f"default image {verb}: {built.kernel} + {built.ramdisk}")
    layout = state_layout(args)
    if layout.database.exists():
        with state_admin(layout, need_ca=False) as admin:
            if args.name == "debian":
                image, new = admin.register_debian_image(IMAGE_NAME, built)
            else:
                image, new = admin.register_default_image(built.kernel, built.ramdisk)
        print(f"registered as {image.image_id}" if new else f"registered already as {image.image_id}")
    return 0


@command(
    "image list",
    help="list registered images",
    args=[arg("--json", action="store_true", help="machine-readable output")],
)
def image_list(args: argparse.Namespace) -> int:
    layout = state_layout(args)
    if not layout.database.exists():
        raise CliError(f"no cloud in {layout.root}: start one with 'cloudlab up' (images are registered then)")
    with state_admin(layout, need_ca=False) as admin:
        images = admin.images.list()
    rows = [
        {
            "image_id": i.image_id,
            "name": i.name,
            "type": i.kind,
            "state": i.state,
            "owner": i.owner,
            "kernel": i.kernel_id or "",
            "ramdisk": i.ramdisk_id or "",
        }
        for i in images
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_table(rows, "no images registered; build the default one with: cloudlab image build")
    return 0
