"""Machine images: ``image build`` (from Debian packages, cached) and ``image list``."""

from __future__ import annotations

import argparse
import json
import sys

from cloudlab.cli.common import CliError, print_table, state_admin, state_layout
from cloudlab.cli.registry import arg, command, group

group("image", help="build, upload and list machine images")


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
    "image upload",
    help="put an image's kernel, ramdisk and disk into a bucket and register it from there",
    args=[
        arg("name", help="the new image's name (its files go under NAME/ in the bucket)"),
        arg("--bucket", required=True, help="the bucket (made if missing)"),
        arg(
            "--from",
            dest="source",
            default="default",
            help="default or debian (a built image), or a folder with vmlinuz, initrd.img, disk.img",
        ),  # fmt: skip
        arg("--user", default="admin", help="whose bucket and image (credentials/USER.json of the state folder)"),
        arg("--description", default="", help="the image's description"),
    ],
)
def image_upload(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cloudlab.buckets import upload_image
    from cloudlab.clc.images import LOCATION_FILES
    from cloudlab.client import CloudNotRunning, connect
    from cloudlab.images.cached import find_built_image

    if args.source in ("default", "debian"):
        built = find_built_image(name=args.source)
        if built is None:
            raise CliError(f"the {args.source} image is not built: cloudlab image build {args.source}")
        files = {"kernel": built.kernel, "ramdisk": built.ramdisk}
        if built.disk is not None:
            files["disk"] = built.disk
    else:
        folder = Path(args.source)
        found = {role: [folder / n for n in names if (folder / n).is_file()] for role, names in LOCATION_FILES.items()}
        files = {role: paths[0] for role, paths in found.items() if paths}
        if "kernel" not in files:
            raise CliError(f"{folder} holds no vmlinuz (or kernel)")
    try:
        cloud = connect(str(state_layout(args).root), user=args.user, progress=False)
    except CloudNotRunning as exc:
        raise CliError(str(exc)) from None
    try:
        image_id = upload_image(cloud, args.name, args.bucket, files, args.description)
    except Exception as exc:  # a client error names what the cloud refused
        raise CliError(f"image upload failed: {exc}") from None
    print(f"uploaded {', '.join(files)} to s3://{args.bucket}/{args.name}/ and registered {image_id}")
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
