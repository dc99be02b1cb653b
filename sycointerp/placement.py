"""Where a model's layers go: device maps as users write them, and device groups for ranks.

A *device map* is HuggingFace's ``device_map``: a strategy name (``"auto"``, ``"balanced"``,
``"balanced_low_0"``, ``"sequential"``), or a mapping from module names to a place: a GPU index
(``0``), ``"cuda:N"``, ``"cpu"``, ``"mps"`` or ``"disk"`` (weights read from an offload folder
at each forward). On the command line a mapping is written as a JSON object.

A *device group* is the run of local GPUs one rank of a ``torchrun`` job places its own copy of
the model over: with ``G`` devices per rank, local rank ``r`` takes GPUs ``r*G .. r*G + G - 1``.
A mapping's GPU indices then count within the rank's group (``0`` is the group's first GPU), so
one map describes every rank's copy; a strategy is confined to the group through
``max_memory``.

Torch-free (the command line validates with it before any heavy import). Refusals are
``ValueError`` with the cause and the fix.
"""

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "STRATEGIES",
    "DeviceMap",
    "parse_device_map",
    "check_device_map",
    "offloads_to_disk",
    "uses_gpus",
    "rank_device_group",
    "group_device_map",
]

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DeviceMap = str | dict[str, str | int]
_PLACES = ("cpu", "disk", "mps", "cuda")


def parse_device_map(text: str) -> DeviceMap | None:
    """A device map from its written form: ``""`` (none), a strategy name, or a JSON object.

    Raises:
        ValueError: an unknown strategy, JSON that is not an object, or a place that is not a GPU
            index, ``"cuda[:N]"``, ``"cpu"``, ``"mps"`` or ``"disk"``.
    """
    text = text.strip()
    if not text:
        return None
    if not text.startswith("{"):
        if text not in STRATEGIES:
            raise ValueError(
                f"device_map {text!r} is not a strategy ({', '.join(STRATEGIES)}) or a JSON "
                'object such as \'{"model.layers.0": 0, "model.layers.1": "disk"}\''
            )
        return text
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"device_map is not valid JSON ({err.msg} at {err.pos})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError("device_map as JSON must be a non-empty object of module -> place")
    return check_device_map(mapping)


def check_device_map(mapping: Mapping[Any, Any]) -> dict[str, str | int]:
    """``mapping`` validated (module names to places), as a plain dict.

    Raises:
        ValueError: a module name that is not a string or a place that is not valid.
    """
    out: dict[str, str | int] = {}
    for module, place in mapping.items():
        if not isinstance(module, str):
            raise ValueError(f"device_map keys are module names (strings), got {module!r}")
        if not _valid_place(place):
            raise ValueError(
                f"device_map[{module!r}] = {place!r} is not a place: give a GPU index (0, 1, ...), "
                "'cuda:N', 'cpu', 'mps' or 'disk'"
            )
        out[module] = place
    return out


def _valid_place(place: Any) -> bool:
    if isinstance(place, bool):
        return False
    if isinstance(place, int):
        return place >= 0
    if not isinstance(place, str):
        return False
    kind, _, index = place.partition(":")
    if kind not in _PLACES:
        return False
    return not index or (kind == "cuda" and index.isdigit())


def _gpu_index(place: str | int) -> int | None:
    """The GPU index a place names (``0`` and ``"cuda:0"`` both 0; ``"cuda"`` 0), else None."""
    if isinstance(place, int):
        return place
    kind, _, index = place.partition(":")
    return (int(index) if index else 0) if kind == "cuda" else None


def offloads_to_disk(device_map: DeviceMap | None) -> bool:
    """Whether a mapping places anything on ``"disk"`` (a strategy decides at load time)."""
    return isinstance(device_map, dict) and "disk" in device_map.values()


def uses_gpus(device_map: DeviceMap | None) -> bool:
    """Whether the map may place layers on GPUs: every strategy, and mappings naming one."""
    if device_map is None:
        return False
    if isinstance(device_map, str):
        return True
    return any(_gpu_index(place) is not None for place in device_map.values())


def rank_device_group(
    local_rank: int, local_world: int, per_rank: int, available: int
) -> tuple[int, ...]:
    """The local GPU indices of ``local_rank``'s group: ``per_rank`` consecutive devices.

    Raises:
        ValueError: a rank outside ``[0, local_world)``, ``per_rank < 1``, groups that do not
            divide the ``available`` devices, or more groups than they make.
    """
    if per_rank < 1:
        raise ValueError(f"devices per rank must be at least 1, got {per_rank}")
    if not 0 <= local_rank < local_world:
        raise ValueError(f"local rank {local_rank} is outside the {local_world} local ranks")
    if available % per_rank:
        raise ValueError(
            f"{per_rank} devices per rank do not divide the {available} visible GPUs; choose a "
            f"divisor of {available} or limit CUDA_VISIBLE_DEVICES"
        )
    if local_world * per_rank > available:
        raise ValueError(
            f"{local_world} ranks x {per_rank} devices need {local_world * per_rank} GPUs, but "
            f"{available} are visible; run --nproc_per_node={available // per_rank} or fewer"
        )
    return tuple(range(local_rank * per_rank, (local_rank + 1) * per_rank))


def group_device_map(
    device_map: DeviceMap | None, group: Sequence[int], memory: Mapping[int, int]
) -> tuple[DeviceMap, dict[int | str, int] | None]:
    """The ``(device_map, max_memory)`` that place one rank's copy over its ``group``.

    Args:
        device_map: the user's map: ``None`` or a strategy (``"balanced"`` when ``None``) is
            confined to the group by ``max_memory``; a mapping's GPU indices count within the
            group and become its devices (``cpu`` / ``disk`` / ``mps`` entries stay).
        group: the rank's local GPU indices (:func:`rank_device_group`).
        memory: GPU index -> bytes the strategy may use there (at least every device of the
            group).

    Raises:
        ValueError: a mapping's GPU index outside the group, or memory missing for a device.
    """
    if device_map is None or isinstance(device_map, str):
        missing = [g for g in group if g not in memory]
        if missing:
            raise ValueError(f"no memory figure for GPUs {missing} of the group {list(group)}")
        return device_map or "balanced", {g: memory[g] for g in group}
    placed: dict[str, str | int] = {}
    for module, place in device_map.items():
        index = _gpu_index(place)
        if index is None:
            placed[module] = place
            continue
        if index >= len(group):
            raise ValueError(
                f"device_map[{module!r}] names GPU {index} but each rank's group has "
                f"{len(group)} (indices count within the group: 0..{len(group) - 1})"
            )
        placed[module] = group[index]
    return placed, None
