"""How a ``cloudlab`` subcommand is declared: a plain function on parsed arguments, registered by its words.

As :func:`cloudlab.api.actions.action` registers an EC2 action by name, :func:`command` registers
``cloudlab user keys create`` under ``("user", "keys", "create")`` together with its arguments; :func:`group`
gives a word that only holds subcommands (``user``, ``user keys``) its help. :func:`build_parser` turns what
the area modules registered into one argparse tree, so no module builds parsers by hand and ``main()``
never rewrites ``argv``.

Two kinds of commands take words that are not theirs to parse, and say so here rather than in ``main()``:
- ``tail="cmd"``: everything after the first ``--`` is a command to run elsewhere (``exec``, ``ssh``), given
  verbatim however the options before it are ordered (argparse alone gives the words after ``--`` to a
  ``nargs="*"`` positional only if nothing else came first, and ``REMAINDER`` swallows options).
- ``passthrough="rest"``: every word goes, unparsed, to a command with its own parser (``bench notebook``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call, kept until the parser is built."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    """An argument of a command, spelled as ``ArgumentParser.add_argument`` takes it."""
    return Arg(flags, options)


@dataclass
class Command:
    """A registered subcommand (``run`` set) or group of subcommands (``run`` None)."""

    words: tuple[str, ...]
    help: str
    run: Run | None = None
    description: str | None = None
    args: Sequence[Arg] = ()
    state: bool = True  # takes --state DIR (after the command's words too)
    tail: str | None = None
    passthrough: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # more add_parser keywords (add_help=False, ...)


COMMANDS: dict[tuple[str, ...], Command] = {}


def _register(entry: Command) -> None:
    if entry.words in COMMANDS:
        raise RuntimeError(f"command {' '.join(entry.words)!r} is registered twice")
    COMMANDS[entry.words] = entry


def command(
    words: str,
    *,
    help: str,  # noqa: A002 - argparse's own name for it
    args: Sequence[Arg] = (),
    description: str | None = None,
    state: bool = True,
    tail: str | None = None,
    passthrough: str | None = None,
    **options: Any,
) -> Callable[[Run], Run]:
    """Register the decorated function as ``cloudlab WORDS``; it returns the exit status."""

    def register(fn: Run) -> Run:
        _register(Command(tuple(words.split()), help, fn, description, args, state, tail, passthrough, options))
        return fn

    return register


def group(words: str, *, help: str, description: str | None = None, state: bool = True) -> None:  # noqa: A002
    """Declare ``cloudlab WORDS`` as a word that holds subcommands (``cloudlab WORDS SUBCOMMAND``)."""
    _register(Command(tuple(words.split()), help, description=description, state=state))


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser that can hand the words after ``--`` (``tail``) or all its words (``passthrough``)
    to its command unparsed; see the module docstring."""

    def __init__(self, *args: Any, tail: str | None = None, passthrough: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tail = tail
        self.passthrough = passthrough

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = list(args) if args is not None else None
        if self.passthrough is not None and words is not None:
            namespace = namespace or argparse.Namespace()
            for key, value in self._defaults.items():  # the command's function, as argparse would set it
                setattr(namespace, key, value)
            setattr(namespace, self.passthrough, words)
            return namespace, []
        if self.tail is not None and words is not None and "--" in words:
            at = words.index("--")
            namespace, extras = super().parse_known_args(words[:at], namespace)
            setattr(namespace, self.tail, words[at + 1 :])
            return namespace, extras
        return super().parse_known_args(words, namespace)


def _state_parent() -> argparse.ArgumentParser:
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="the cloud's state folder (default: $CLOUDLAB_STATE or the nearest .cloudlab/)",
    )
    return state


def build_parser(prog: str, description: str) -> CliParser:
    """The whole ``cloudlab`` parser from what is registered, subcommands in the order they were registered."""
    state = _state_parent()
    root = CliParser(prog=prog, parents=[state], description=description)
    subparsers: dict[tuple[str, ...], Any] = {(): root.add_subparsers(dest="command", metavar="COMMAND", required=True)}
    for words, entry in COMMANDS.items():
        parent = subparsers.get(words[:-1])
        if parent is None:
            raise RuntimeError(f"command {' '.join(words)!r} is registered before its group {' '.join(words[:-1])!r}")
        kwargs: dict[str, Any] = {"help": entry.help, **entry.options}
        if entry.description:
            kwargs["description"] = entry.description
        if entry.state:
            kwargs["parents"] = [state]
        # (a CliParser's subparsers are CliParsers: add_subparsers makes its parsers of its own class)
        parser = parent.add_parser(words[-1], tail=entry.tail, passthrough=entry.passthrough, **kwargs)
        for argument in entry.args:
            parser.add_argument(*argument.flags, **argument.options)
        if entry.run is None:
            dest = "_".join(words) + "_command"
            subparsers[words] = parser.add_subparsers(dest=dest, metavar="SUBCOMMAND", required=True)
        else:
            parser.set_defaults(func=entry.run)
    return root
