"""Find the last finished default image in the build cache, without resolving packages.

Starting the cloud must not touch apt: it registers whatever default image was built last
(``cloudlab image build`` decides whether that one is still current).
"""

from __future__ import annotations

import json
from pathlib import Path

from cloudlab.images.build import BuiltImage, default_cache_dir


def find_built_image(cache_dir: Path | None = None) -> BuiltImage | None:
    target = (cache_dir or default_cache_dir()) / "images" / "default"
    try:
        manifest = json.loads((target / "manifest.json").read_text())
        for name, info in manifest["outputs"].items():
            if (target / name).stat().st_size != info["size"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return BuiltImage(target / "vmlinuz", target / "initrd.img", manifest, False, target)
