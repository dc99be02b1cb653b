"""Package namespaces whose names load on first use (keeps ``import`` and ``--help`` fast)."""

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_namespace"]


def lazy_namespace(
    package: str, homes: dict[str, str]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``, whose names live in other modules.

    Args:
        package: the package's dotted name (for the error message).
        homes: module -> space-separated names it defines.
    """
    lazy = {name: module for module, names in homes.items() for name in names.split()}

    def getattr_(name: str) -> Any:
        if name in lazy:
            return getattr(importlib.import_module(lazy[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted(lazy)

    return sorted(lazy), getattr_, dir_
