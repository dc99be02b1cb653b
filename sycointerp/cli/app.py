"""The command-line application layer: argument parsing, logging, and user errors -> exit 2.

Every job (``sycointerp.cli.patch``, ``.spt``, ``.effect``, ``.study``, ``.report``) builds its
parser here: a :class:`CliParser` whose usage errors are one line on stderr and exit status 2,
``--config`` / ``--out`` / ``--overwrite`` / ``-q`` / ``-v`` and one flag per field of a
:class:`~sycointerp._config.TomlConfig` (``batch_size`` -> ``--batch-size``; booleans get ``--x`` /
``--no-x``; lists are comma-separated). Precedence: defaults < ``--config`` file < flags given.
:func:`guarded` turns any :class:`~sycointerp.errors.UserError` raised by a job into one line on
stderr and exit status 2.
"""

import argparse
import atexit
import errno
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

from sycointerp._config import TomlConfig, choices_of, field_type, item_type, load_toml
from sycointerp.errors import UserError

__all__ = [
    "CliParser",
    "add_flags",
    "add_verbosity",
    "job_parser",
    "resolve_args",
    "guarded",
    "setup_logging",
]

C = TypeVar("C", bound=TomlConfig)


def _list_parser(item: type):
    def parse(text: str) -> list:
        try:
            return [item(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {item.__name__}s, got {text!r}"
            ) from None

    return parse


def add_flags(parser: argparse.ArgumentParser, cls: type[TomlConfig]) -> None:
    """One flag per field, grouped by section; defaults are SUPPRESSed so only given flags
    override."""
    groups = {s: parser.add_argument_group(f"[{s}] options") for s in cls.SECTIONS}
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.metadata["default"]
        shown = ",".join(map(str, default)) if isinstance(default, list) else repr(default)
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            # argparse %-formats help strings: a literal % (e.g. "the paper's (F - F0) / F0 %")
            # would be read as a format code.
            "help": f"{f.metadata['help']} (default: {shown})".replace("%", "%%"),
        }
        group = groups[f.metadata["section"]]
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kind = _list_parser(item_type(f)) if field_type(f) is list else field_type(f)
        # A registry's names are checked by the config, not argparse: listing them here would
        # import the registry (and torch) for --help.
        choices = None if callable(f.metadata["choices"]) else choices_of(f)
        group.add_argument(
            flag, type=kind, choices=choices, metavar=None if choices else f.name.upper(), **kwargs
        )


def resolve_args(args: argparse.Namespace, cls: type[C]) -> C:
    """Defaults, then the ``--config`` file (``args.config``), then the flags given.

    Raises:
        ConfigError: invalid file, key or value.
    """
    base = cls.from_toml_dict(load_toml(args.config)) if getattr(args, "config", None) else cls()
    given: dict[str, dict[str, Any]] = {}
    for f in fields(cls):
        if hasattr(args, f.name):
            given.setdefault(f.metadata["section"], {})[f.name] = getattr(args, f.name)
    return cls.from_toml_dict(given, base)


class CliParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit status 2 (no usage block)."""

    def error(self, message: str) -> None:
        """One line on stderr and exit status 2 (argparse's usage block is left out).

        Raises:
            SystemExit: always, with status 2.
        """
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def job_parser(
    prog: str, description: str, epilog: str, cls: type[TomlConfig], default_out: str, what: str
) -> CliParser:
    """The parser of a batch CLI: ``--config``, ``--out``, ``--overwrite``, ``-q`` / ``-v`` and
    one flag per field of ``cls``; ``what`` names the job in the help ("job", "run")."""
    p = CliParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=description,
        epilog=epilog,
    )
    p.add_argument(
        "--config", default=None, help="TOML file of options (flags override it) (default: none)"
    )
    p.add_argument("--out", default=default_out, help=f"output directory (default: {default_out})")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace the {what} in --out even if its configuration differs (default: off)",
    )
    add_verbosity(p)
    add_flags(p, cls)
    return p


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """``-q`` / ``--quiet`` and ``-v`` / ``--verbose`` (exclusive), read by :func:`setup_logging`;
    progress bars are on unless ``-q``."""
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only warnings and errors, no progress bars (default: off)",
    )
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging (default: off)"
    )


def setup_logging(args: argparse.Namespace) -> None:
    """``sycointerp`` loggers at INFO (``-v``: DEBUG, ``-q``: WARNING); others at WARNING.

    Third-party INFO chatter (transformers, kaleido's browser) stays out of the job log unless
    ``-v``; ``-q`` also turns off transformers' progress bars.
    """
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.getLogger("sycointerp").setLevel(level)
    if args.quiet:
        from sycointerp._compat import quiet_transformers

        quiet_transformers()


def user_error_line(prog: str, err: BaseException) -> str:
    """``"<prog>: error: <message>"`` on one line (a multi-line message is joined)."""
    return f"{prog}: error: " + " ".join(str(err).split())


# Failures of the machine, not of the inputs: the job stops with what it finished saved.
_RESUMABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def guarded(prog: str, body: Callable[[], int]) -> int:
    """``body()``'s exit status; a :class:`UserError` is one line on stderr and status 2.

    A full disk, a read-only or unwritable directory, or an I/O error while the job writes is
    one line naming the file and the error, and status 1: the finished chunks are on disk
    (every write is atomic), so rerunning the same command resumes.
    """
    try:
        return body()
    except UserError as err:
        print(user_error_line(prog, err), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # A second Ctrl-C while the interpreter shuts down (threads joined, atexit) would print an
        # ignored-exception trace: from the shutdown on, Ctrl-C is ignored. Registered, not set
        # now, so that a session that called the CLI in-process (Jupyter) keeps its Ctrl-C.
        atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as err:
        if err.errno not in _RESUMABLE:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"{prog}: error: {where}{err.strerror}; fix that and rerun the same command to "
            "resume (finished work is kept)",
            file=sys.stderr,
        )
        return 1
