"""Into the cloud's network: ``exec`` (a command in the outside namespace) and ``ssh`` (into an instance).

Both take the command to run after ``--``, verbatim, wherever their own options stand (see
:class:`cloudlab.cli.registry.CliParser`): ``cloudlab ssh i-... -i KEY -- uname -a`` and ``cloudlab ssh -i KEY
i-... -- uname -a`` run the same ``uname -a``, and a command that starts with ``-`` stays a command.
"""

from __future__ import annotations

import argparse
import os
import sys

from cloudlab import servicectl
from cloudlab.cli.common import CliError, state_layout
from cloudlab.cli.registry import arg, command
from cloudlab.config import CloudConfig
from cloudlab.paths import StateLayout


def _outside_namespace(layout: StateLayout) -> str:
    from cloudlab.net import netns

    if servicectl.endpoint(layout) is None:
        raise CliError(f"cloud is not running (state {layout.root}); start it with: cloudlab up --network vde")
    name = layout.outside_namespace
    if not netns.exists(name):
        raise CliError("this cloud has no network (started with --network none): restart it with --network vde|direct")
    return name


def _exec(argv: list[str]) -> int:
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise CliError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    return 127  # not reached


@command(
    "exec",
    help="run a command in the cluster's outside namespace (instances' addresses are reachable there)",
    tail="cmd",
    args=[
        arg("--cluster", default=None, help="cluster (default the only one)"),
        arg("cmd", nargs="*", metavar="-- COMMAND", help="the command and its arguments, after -- (default a shell)"),
    ],
)
def exec_in_namespace(args: argparse.Namespace) -> int:
    from cloudlab.net import netns

    layout = state_layout(args)
    config = CloudConfig.load(layout.config) if layout.config.exists() else CloudConfig()
    if args.cluster not in (None, config.cluster):
        raise CliError(f"no cluster {args.cluster!r}: this cloud has one cluster, {config.cluster}")
    command_words = args.cmd or [os.environ.get("SHELL", "/bin/sh")]
    return _exec(netns.command(_outside_namespace(layout), command_words))


@command(
    "ssh",
    help="SSH to an instance from the cluster's outside namespace",
    tail="cmd",
    args=[
        arg("instance_id", metavar="INSTANCE_ID"),
        arg("-i", dest="identity", metavar="KEY", help="private key (default the launch key pair's)"),
        arg("--user", default="root", help="login (default root)"),
        arg("--public", action="store_true", help="use the elastic address instead of the private one"),
        arg(
            "cmd",
            nargs="*",
            metavar="-- COMMAND",
            help="the command and its arguments, after -- (default a login shell)",
        ),
    ],
)
def ssh(args: argparse.Namespace) -> int:
    from cloudlab.client import connect
    from cloudlab.reach import Unreachable, instance_remote

    layout = state_layout(args)
    _outside_namespace(layout)  # a running cloud with a network, or a one-line error
    try:
        remote = instance_remote(
            connect(str(layout.root)), args.instance_id, key=args.identity, public=args.public, user=args.user
        )
    except Unreachable as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:  # botocore's ClientError: a malformed or unknown id
        raise CliError(f"cannot find {args.instance_id}: {exc}") from None
    argv = remote.argv(None)  # ends with the destination: a login shell
    if args.cmd:
        # As ssh itself does, the words are joined with spaces for the remote shell; after "--", so that ssh
        # never reads the command (or a word of it starting with "-") as one of its own options.
        argv += ["--", " ".join(args.cmd)]
    return _exec(argv)
