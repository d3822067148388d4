"""Find the last finished default image in the build cache, without resolving packages.

Starting the cloud must not touch apt: it registers whatever default image was built last
(``cloudlab image build`` decides whether that one is still current).
"""

from __future__ import annotations

from pathlib import Path

from cloudlab.images.build import BuiltImage, _finished_image, default_cache_dir


def find_built_image(cache_dir: Path | None = None) -> BuiltImage | None:
    return _finished_image((cache_dir or default_cache_dir()) / "images" / "default", None)
