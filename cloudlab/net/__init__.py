"""Low-level network primitives (namespaces, links, VDE, nftables) that every cloudlab network is built from."""


class NetError(Exception):
    """A network primitive failed; the message says what failed and how to fix it."""
