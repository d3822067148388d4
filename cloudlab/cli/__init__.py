"""``cloudlab``: run a cloud on this machine and look at it.

Every command has ``--help``; every failure is one line that says what to do, with exit status 1
(2 for a usage error, as argparse does).

One module per area registers its subcommands with :func:`cloudlab.cli.registry.command` (as
:mod:`cloudlab.api.actions` registers actions); :data:`AREAS` is the order ``cloudlab --help`` lists them in.
"""

from __future__ import annotations

import importlib
import sys

from cloudlab import servicectl
from cloudlab.clc.offline import StateError
from cloudlab.cli.common import CliError
from cloudlab.cli.registry import CliParser
from cloudlab.cli.registry import build_parser as _build
from cloudlab.config import ConfigError
from cloudlab.errors import CloudError

AREAS = ("cloud", "network", "bench", "images", "node", "users")

for _area in AREAS:
    importlib.import_module(f"{__name__}.{_area}")

DESCRIPTION = (
    "A small, real, EC2-compatible private cloud on this machine: libvirt VMs, an EC2 Query API "
    "for boto3 and the AWS CLI, and a JupyterLab front end."
)


def build_parser() -> CliParser:
    return _build("cloudlab", DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, CloudError, ConfigError, servicectl.ControlError, StateError) as exc:
        message = exc.message if isinstance(exc, CloudError) else str(exc)
        print(f"cloudlab: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


__all__ = ["AREAS", "CliError", "build_parser", "main"]
