"""Sectioned TOML configurations: frozen dataclasses whose fields carry their own validation.

A configuration is a frozen dataclass deriving from :class:`TomlConfig` whose fields are declared
with :func:`opt`: each carries its TOML section, help text, allowed choices and lower bound. From
that one declaration come the TOML form (``[section]`` tables, written by :func:`dump_toml`), the
command-line flags of :mod:`sycointerp.cli.app` (``batch_size`` -> ``--batch-size``; booleans get
``--x`` / ``--no-x``; lists are comma-separated) and the validation. Precedence: defaults <
``--config`` file < flags given. Strings use ``""`` for "not set" because TOML has no null.

Refusals (:class:`ConfigError`, a ``ValueError``): unknown sections or keys, values of the wrong
type, out-of-range numbers, unknown choices, unreadable or invalid TOML.
"""

import dataclasses
import math
import tomllib
from collections.abc import Callable
from dataclasses import field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import tomli_w

from sycointerp.errors import UserError

__all__ = [
    "ConfigError",
    "TomlConfig",
    "opt",
    "load_toml",
    "dump_toml",
    "config_diff",
    "check_value",
    "choices_of",
    "field_type",
    "item_type",
]

C = TypeVar("C", bound="TomlConfig")
_TYPES = {"str": str, "int": int, "bool": bool, "float": float}


class ConfigError(UserError):
    """A configuration value, key or file is invalid; the message names it and the fix."""


def opt(
    section: str,
    help: str,
    default: Any,
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None,
    minimum: int | float | None = None,
) -> Any:
    """A config field: its section, help text, allowed choices and lower bound travel as
    metadata.

    ``choices`` may be a function returning them (a registry's names): it is asked at validation
    and when a parser is built, so a method registered after the class was defined is a choice.
    """
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


def field_type(f: dataclasses.Field) -> type:
    return _TYPES.get(getattr(f.type, "__name__", ""), list)


def item_type(f: dataclasses.Field) -> type:
    args = getattr(f.type, "__args__", (str,))
    return args[0] if args else str


def choices_of(f: dataclasses.Field) -> tuple[Any, ...] | None:
    """The allowed values of a field now (a registry-backed field's current names), or None."""
    choices = f.metadata["choices"]
    return tuple(choices()) if callable(choices) else choices


def check_value(f: dataclasses.Field, value: Any) -> None:
    """Type, choice and lower-bound check of one field's value.

    Raises:
        ConfigError: naming the field, its flag and the allowed values.
    """
    meta, flag = f.metadata, f"{f.name} (--{f.name.replace('_', '-')})"
    expected = field_type(f)
    if expected is list:
        item = item_type(f)
        if not isinstance(value, list) or not all(
            isinstance(v, item) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{flag} must be a list of {item.__name__}s, got {value!r}")
    elif expected is float and isinstance(value, int) and not isinstance(value, bool):
        pass  # TOML writes 1 for 1.0; an int is a fine float
    elif not isinstance(value, expected) or (expected in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{flag} must be {expected.__name__}, got {value!r}")
    choices = choices_of(f)
    if choices and value not in choices:
        raise ConfigError(f"{flag} must be one of {', '.join(map(str, choices))}; got {value!r}")
    if expected is float and not math.isfinite(value):
        # NaN compares False with everything, so the minimum check below would let it through.
        raise ConfigError(f"{flag} must be a finite number, got {value}")
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
                        f"unknown key {key!r} in [{section}]; known: "
                        f"{', '.join(sorted(by_section[section]))}"
                    )
                check_value(
                    by_name[key], value
                )  # before construction: a ConfigError, not a TypeError
                updates[key] = float(value) if field_type(by_name[key]) is float else value
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
    """The configuration as TOML (sections in a fixed order, keys in field order) after a
    comment."""
    return f"# {header}\n" + tomli_w.dumps(config.to_toml_dict())


def config_diff(a: TomlConfig, b: TomlConfig) -> list[str]:
    """Names of the fields where two configurations differ.

    Two strings naming the same existing file or folder (``runs/x/heads.csv`` from one working
    directory, ``/home/u/runs/x/heads.csv`` from another) are the same value: a resume must not
    be refused for how a path was spelled. Whether the file's content changed is the provenance
    check's job, not this one's.
    """
    return [f.name for f in fields(a) if not _same_value(getattr(a, f.name), getattr(b, f.name))]


def _same_value(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return False
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
