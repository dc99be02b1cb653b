"""Sectioned TOML configurations with one command-line flag per field (shared by the CLIs).

A configuration is a frozen dataclass deriving from :class:`TomlConfig` whose fields are declared
with :func:`opt`: each carries its TOML section, help text, allowed choices and lower bound. From
that one declaration come the TOML form (``[section]`` tables, written by :func:`dump_toml`), the
flags (``batch_size`` -> ``--batch-size``; booleans get ``--x`` / ``--no-x``; lists are
comma-separated) and the validation. Precedence: defaults < ``--config`` file < flags given.
Strings use ``""`` for "not set" because TOML has no null.

Refusals (:class:`ConfigError`, a ``ValueError``): unknown sections or keys, values of the wrong
type, out-of-range numbers, unknown choices, unreadable or invalid TOML.
"""

import argparse
import dataclasses
import sys
import tomllib
from dataclasses import field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import tomli_w

__all__ = [
    "ConfigError",
    "TomlConfig",
    "opt",
    "load_toml",
    "dump_toml",
    "config_diff",
    "add_flags",
    "resolve_args",
    "CliParser",
    "job_parser",
]

C = TypeVar("C", bound="TomlConfig")
_TYPES = {"str": str, "int": int, "bool": bool, "float": float}


class ConfigError(ValueError):
    """A configuration value, key or file is invalid; the message names it and the fix."""


def opt(
    section: str,
    help: str,
    default: Any,
    choices: tuple[Any, ...] | None = None,
    minimum: int | float | None = None,
) -> Any:
    """A config field: its section, help text, allowed choices and lower bound travel as metadata."""
    meta = {
        "section": section,
        "help": help,
        "choices": choices,
        "minimum": minimum,
        "default": default,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _field_type(f: dataclasses.Field) -> type:
    return _TYPES.get(getattr(f.type, "__name__", ""), list)


def _item_type(f: dataclasses.Field) -> type:
    args = getattr(f.type, "__args__", (str,))
    return args[0] if args else str


def check_value(f: dataclasses.Field, value: Any) -> None:
    """Type, choice and lower-bound check of one field's value.

    Raises:
        ConfigError: naming the field, its flag and the allowed values.
    """
    meta, flag = f.metadata, f"{f.name} (--{f.name.replace('_', '-')})"
    expected = _field_type(f)
    if expected is list:
        item = _item_type(f)
        if not isinstance(value, list) or not all(
            isinstance(v, item) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{flag} must be a list of {item.__name__}s, got {value!r}")
    elif expected is float and isinstance(value, int) and not isinstance(value, bool):
        pass  # TOML writes 1 for 1.0; an int is a fine float
    elif not isinstance(value, expected) or (expected in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{flag} must be {expected.__name__}, got {value!r}")
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(
            f"{flag} must be one of {', '.join(map(str, meta['choices']))}; got {value!r}"
        )
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise ConfigError(f"{flag} must be >= {meta['minimum']}, got {value}")


class TomlConfig:
    """Mixin for frozen dataclasses of :func:`opt` fields; subclasses set ``SECTIONS``."""

    SECTIONS: ClassVar[tuple[str, ...]] = ()

    def check_fields(self) -> None:
        """Validate every field (call from ``__post_init__``)."""
        for f in fields(self):
            check_value(f, getattr(self, f.name))

    def default_of(self, name: str) -> Any:
        return {f.name: f for f in fields(self)}[name].metadata["default"]

    def to_toml_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {s: {} for s in self.SECTIONS}
        for f in fields(self):
            out[f.metadata["section"]][f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_toml_dict(cls: type[C], data: dict[str, Any], base: C | None = None) -> C:
        """``base`` (default: the defaults) updated with ``{section: {key: value}}``.

        Raises:
            ConfigError: unknown section or key, or an invalid value.
        """
        by_name = {f.name: f for f in fields(cls)}
        by_section = {
            s: {n for n, f in by_name.items() if f.metadata["section"] == s} for s in cls.SECTIONS
        }
        updates: dict[str, Any] = {}
        for section, values in data.items():
            if section not in by_section or not isinstance(values, dict):
                raise ConfigError(
                    f"unknown config section [{section}]; sections are {', '.join(cls.SECTIONS)}"
                )
            for key, value in values.items():
                if key not in by_section[section]:
                    raise ConfigError(
                        f"unknown key {key!r} in [{section}]; known: {', '.join(sorted(by_section[section]))}"
                    )
                check_value(
                    by_name[key], value
                )  # before construction: a ConfigError, not a TypeError
                updates[key] = float(value) if _field_type(by_name[key]) is float else value
        return dataclasses.replace(base or cls(), **updates)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file.

    Raises:
        ConfigError: missing, unreadable or invalid TOML (the message gives the parser's line).
    """
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None


def dump_toml(config: TomlConfig, header: str) -> str:
    """The configuration as TOML (sections in a fixed order, keys in field order) after a comment."""
    return f"# {header}\n" + tomli_w.dumps(config.to_toml_dict())


def config_diff(a: TomlConfig, b: TomlConfig) -> list[str]:
    """Names of the fields where two configurations differ."""
    return [f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]


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
    """One flag per field, grouped by section; defaults are SUPPRESSed so only given flags override."""
    groups = {s: parser.add_argument_group(f"[{s}] options") for s in cls.SECTIONS}
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.metadata["default"]
        shown = ",".join(map(str, default)) if isinstance(default, list) else repr(default)
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f"{f.metadata['help']} (default: {shown})",
        }
        group = groups[f.metadata["section"]]
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kind = _list_parser(_item_type(f)) if _field_type(f) is list else _field_type(f)
        group.add_argument(
            flag,
            type=kind,
            choices=f.metadata["choices"],
            metavar=None if f.metadata["choices"] else f.name.upper(),
            **kwargs,
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
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only warnings and errors, no progress bars (default: off)",
    )
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging (default: off)"
    )
    add_flags(p, cls)
    return p
