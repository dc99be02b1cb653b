"""The registry of head-patching methods: what the patch job, its configuration, the figures and
the study know about each technique.

A :class:`PatchMethod` names a technique's function (the shared signature
``f(model, pairs, metric, *, batch_size, progress, **options) -> PatchResult``), its label in
figures, the job options it reads (a config option -> the function's keyword), the positions it
can patch, and when it needs token-aligned pairs. The patch job reads nothing else: adding a
method is its module plus one :func:`register_patch_method` call (or, for one experiment,
``with PATCH_METHODS.added(method): ...``).

Option ownership follows from the records: an option that no chosen method reads must stay at its
default (a silent no-op is refused by the job's configuration).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sycointerp._registry import Registry
from sycointerp.patching.activation import patch_heads
from sycointerp.patching.attribution import attribution_patch_heads
from sycointerp.patching.path import path_patch_heads
from sycointerp.patching.results import PatchResult

__all__ = ["PATCH_METHODS", "PatchMethod", "register_patch_method"]

POSITIONS = ("last", "all")


def _never(options: Mapping[str, Any]) -> bool:
    return False


@dataclass(frozen=True)
class PatchMethod:
    """A head-patching technique as the jobs see it.

    Attributes:
        name: the ``--method`` value and the first part of the result's method tag.
        label: how figures name it ("path patching").
        run: ``run(model, pairs, metric, *, batch_size, progress, **options) -> PatchResult``.
        options: job option -> ``run``'s keyword, for each option the method reads (e.g.
            ``{"positions": "position"}``); ``batch_size`` and ``progress`` are always passed.
        positions: the ``positions`` values it supports (``"last"`` and/or ``"all"``).
        aligned: given the job's options, whether the pairs must be token-aligned (equal length).

    Raises:
        ValueError: an empty label, a non-callable ``run`` or an unknown position.
    """

    name: str
    label: str
    run: Callable[..., PatchResult]
    options: Mapping[str, str] = field(default_factory=dict)
    positions: tuple[str, ...] = ("last",)
    aligned: Callable[[Mapping[str, Any]], bool] = _never

    def __post_init__(self) -> None:
        if not self.label or not callable(self.run):
            raise ValueError(f"patching method {self.name!r} needs a label and a callable run")
        if not self.positions or set(self.positions) - set(POSITIONS):
            raise ValueError(f"positions must be among {POSITIONS}, got {self.positions}")

    def __call__(
        self,
        model: Any,
        pairs: Any,
        metric: Any,
        options: Mapping[str, Any],
        *,
        batch_size: int,
        progress: Any = False,
    ) -> PatchResult:
        """Run the method with the options it reads (taken from ``options`` by option name).

        Raises:
            KeyError: ``options`` lacks one the method reads.
        """
        kwargs = {keyword: options[option] for option, keyword in self.options.items()}
        return self.run(model, pairs, metric, batch_size=batch_size, progress=progress, **kwargs)


PATCH_METHODS: Registry[PatchMethod] = Registry("patching method")


def register_patch_method(method: PatchMethod, *, replace: bool = False) -> PatchMethod:
    """Make ``method`` a choice of the patch job (``--method``), its figures and the study.

    Raises:
        ValueError: a taken name (without ``replace``) or a name that is not an identifier.
    """
    return PATCH_METHODS.register(method, replace=replace)


register_patch_method(
    PatchMethod(
        "activation",
        "activation patching",
        patch_heads,
        {"component": "component", "positions": "position", "direction": "direction"}
        | {"engine": "engine"},
        positions=("last", "all"),
        aligned=lambda o: o["positions"] == "all",
    )
)
register_patch_method(
    PatchMethod(
        "path",
        "path patching",
        path_patch_heads,
        {"freeze_mlps": "freeze_mlps", "engine": "engine"},
    )
)
register_patch_method(
    PatchMethod(
        "attribution",
        "attribution patching",
        attribution_patch_heads,
        {"positions": "position", "direction": "direction", "ig_steps": "ig_steps"},
        positions=("last", "all"),
        # integrated gradients interpolate the two runs' activations position by position
        aligned=lambda o: o["positions"] == "all" or o["ig_steps"] > 0,
    )
)
