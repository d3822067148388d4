"""Walrus: cloudlab's S3-compatible object store (the storage engine; the S3 protocol is a face in
:mod:`cloudlab.api.s3`). Data under ``STATE/walrus/data``, metadata in ``STATE/walrus/walrus.db``.

For the cloud's own readers (images registered from a bucket, snapshots imported from an S3 disk
image): the running service holds the engine as ``CloudService.walrus.walrus``; open an object with
``walrus.open_object(principal, bucket, key)`` (the owner's principal, or ``Principal("admin", ..., True)``
for the cloud itself) and read it as ``data.chunks(first, last)`` or as ``data.pieces(first, last)``
(file descriptor, offset, length: for ``sendfile``/``copy_file_range`` into an image cache without a copy
through Python), closing it when done (``with`` works). Writing goes through ``put_object`` with an
iterable of chunks, so an uploader streams a disk image in as the S3 face does.
"""

from cloudlab.walrus.access import Principal
from cloudlab.walrus.engine import Walrus
from cloudlab.walrus.errors import WalrusError
from cloudlab.walrus.records import Integrity, WriteSpec

__all__ = ["Integrity", "Principal", "Walrus", "WalrusError", "WriteSpec"]
