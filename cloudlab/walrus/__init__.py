"""Walrus: cloudlab's S3-compatible object store (the storage engine; the S3 protocol is a face in
:mod:`cloudlab.api.s3`). Data under ``STATE/walrus/data``, metadata in ``STATE/walrus/walrus.db``."""

from cloudlab.walrus.access import Principal
from cloudlab.walrus.engine import Walrus
from cloudlab.walrus.errors import WalrusError
from cloudlab.walrus.records import Integrity, WriteSpec

__all__ = ["Integrity", "Principal", "Walrus", "WalrusError", "WriteSpec"]
