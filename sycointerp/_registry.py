"""Registries: a plain mapping from a name to a small frozen record, shared by every extension
point (patching methods, metrics, SPT methods, control kinds).

A record is any frozen dataclass with a ``name``; the registry keeps them in registration order.
The command line's choices, the configurations' validation, the figures' labels and the study all
read a registry, so adding a method is its module plus one :meth:`Registry.register` call.
Lookups of an unknown name raise a :class:`KeyError` that lists the registered names.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar, runtime_checkable

__all__ = ["Named", "Registry"]


@runtime_checkable
class Named(Protocol):
    """What a registry holds: a record with a ``name``."""

    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Name -> record, in registration order.

    Args:
        what: what the records are, for messages ("patching method").
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, entry: T, *, replace: bool = False) -> T:
        """Add ``entry`` under its name and return it (usable as a decorator's last step).

        Raises:
            ValueError: the name is not a lower-case identifier, or is taken (without
                ``replace``).
        """
        name = entry.name
        if not name.isidentifier() or name != name.lower():
            raise ValueError(f"{self.what} name {name!r} must be a lower-case identifier")
        if name in self._entries and not replace:
            raise ValueError(f"a {self.what} named {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove and return the record of ``name``.

        Raises:
            KeyError: no such name.
        """
        entry = self[name]
        del self._entries[name]
        return entry

    @contextmanager
    def added(self, entry: T) -> Iterator[T]:
        """``entry`` registered inside the block only (an experiment's or a test's own method).

        Raises:
            ValueError: as :meth:`register`.
        """
        self.register(entry)
        try:
            yield entry
        finally:
            self._entries.pop(entry.name, None)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"no {self.what} named {name!r}; registered: {', '.join(self._entries)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def values(self) -> tuple[T, ...]:
        """The records, in registration order."""
        return tuple(self._entries.values())
