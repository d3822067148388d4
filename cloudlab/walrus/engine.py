"""Walrus, the cloud's object store: one engine, every operation, no protocol.

The S3 face (:mod:`cloudlab.api.s3`) parses requests and serialises answers; everything S3 *means*
(versions, delete markers, ACLs, quotas, multipart, listing order) happens here, on records and
streams, so the engine can be driven from Python directly (tests, benchmarks, image upload) with the
same checks as over HTTP. It imports nothing from the faces.
"""

from __future__ import annotations

from cloudlab.walrus.buckets import BucketOps
from cloudlab.walrus.listing import ListingOps
from cloudlab.walrus.multipart import MultipartOps


class Walrus(BucketOps, MultipartOps, ListingOps):
    """The engine over one state folder (``STATE/walrus``): ``Walrus(root, region)``."""


__all__ = ["Walrus"]
