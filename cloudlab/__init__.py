"""cloudlab: a small, real, EC2-compatible private cloud for experiments."""

__version__ = "0.1.0"
