"""The one user-error hierarchy: every mistake a user can fix derives from :class:`UserError`.

The command-line entry points (:mod:`sycointerp.cli`) print a :class:`UserError` as one line on
stderr and exit with status 2; library callers can catch it (it is a ``ValueError``) or one of
its subclasses, which live next to the code that raises them (``DataError`` here, since data,
chat rendering and loaders all raise it; ``ConfigError`` in :mod:`sycointerp._config`,
``ModelLoadError`` in :mod:`sycointerp.models`, ``HeadFileError`` in :mod:`sycointerp.heads`, ...).
Failures that are not the user's (a non-finite training loss, a bug) are not ``UserError``\\ s.
"""

__all__ = ["DataError", "UserError"]


class UserError(ValueError):
    """An input, option, file or directory the user can fix; the message names it and the fix."""


class DataError(UserError):
    """A dataset, record or prompt is malformed; the message names the file, the line and the
    fix."""
