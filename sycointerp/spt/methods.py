"""The registry of SPT methods: what the SPT experiment can run, each on the same data and
schedule, evaluated the same way.

An :class:`SPTMethod` is one of three kinds, by what it carries:

- **untuned** (neither ``train`` nor ``steer``): ``base``;
- **trained**: ``train(inputs) -> Tunable`` (:mod:`sycointerp.spt.tunable`), run by
  :func:`sycointerp.spt.train.train` at the peak learning rate of option ``lr_option``: ``spt``
  (the selected heads' slices), ``lora_heads`` (rank-r deltas on them), ``lora`` (peft LoRA on
  every attention projection), ``sft`` (every weight), and the random-head controls ``random``,
  ``random_layer``, ``random_norm``, which tune a head set of a control kind
  (:data:`sycointerp.patching.controls.CONTROL_KINDS`: ``uniform``, ``layer_matched``,
  ``norm_matched``) drawn ``draws`` times (``<method>-<d>``, draw d seeded ``seed + d``);
- **steering**: ``steer(model, train_qs, k, options, save_dir=, reference=) -> (steer, record)``
  (:mod:`sycointerp.spt.steering_baselines`): ``caa``, ``iti``, no training.

The experiment, its configuration's choices, and the study read only this registry: adding a
baseline is its module plus one :func:`register_spt_method` call.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sycointerp._registry import Registry
from sycointerp.heads import HeadGrid, HeadSet
from sycointerp.patching.controls import CONTROL_KINDS
from sycointerp.spt.steering_baselines import prepare_caa, prepare_iti
from sycointerp.spt.tunable import FullWeights, HeadDeltas, PeftLoRA, Tunable

__all__ = [
    "NORM_TOLERANCE",
    "SPT_METHODS",
    "MethodInputs",
    "SPTMethod",
    "control_heads",
    "register_spt_method",
]

NORM_TOLERANCE = 0.1  # relative W_O-norm gap allowed for a norm-matched partner head


@dataclass(frozen=True)
class MethodInputs:
    """What a trained method's ``train`` builds from.

    Attributes:
        model: the HuggingFace model to tune (fresh for each method run).
        heads: the selected heads (the experiment's top K).
        options: the experiment's options by name (``seed``, ``tune_kv``, ``lora_rank``, ...).
        draw: which draw of a control method (0 otherwise).
        norms: computes every head's W_O norm ``[layer, head]`` (asked only by norm-matched
            controls).
    """

    model: torch.nn.Module
    heads: HeadSet
    options: Mapping[str, Any]
    draw: int = 0
    norms: Callable[[], torch.Tensor] | None = None

    @property
    def tune_kv(self) -> bool | None:
        """The ``tune_kv`` option as :class:`HeadDeltas` takes it (auto = None)."""
        return {"auto": None, "yes": True, "no": False}[self.options["tune_kv"]]


@dataclass(frozen=True)
class SPTMethod:
    """A method of the SPT experiment (see the module docstring for the three kinds).

    Attributes:
        name: the ``--methods`` value, its output folder and its row's name.
        label: how tables and figures describe it.
        train: builds what trains (None: not a trained method).
        steer: prepares a steering (None: not a steering method).
        lr_option: the option holding its peak learning rate (``lr`` or ``lora_lr``).
        counts_heads: its row's ``heads`` column is the selected set's size.
        control: the control kind it draws its heads from; such a method runs ``draws`` times.
        wants_reference: ``steer`` compares with the path ranking of every head (``iti``).

    Raises:
        ValueError: both ``train`` and ``steer``, or an unknown control kind.
    """

    name: str
    label: str
    train: Callable[[MethodInputs], Tunable] | None = None
    steer: Callable[..., tuple[Any, dict[str, Any]]] | None = None
    lr_option: str = "lr"
    counts_heads: bool = False
    control: str | None = None
    wants_reference: bool = False

    def __post_init__(self) -> None:
        if self.train is not None and self.steer is not None:
            raise ValueError(f"SPT method {self.name!r} either trains or steers, not both")
        if self.control is not None and self.control not in CONTROL_KINDS:
            raise ValueError(
                f"SPT method {self.name!r}: unknown control kind {self.control!r}; registered: "
                f"{', '.join(CONTROL_KINDS)}"
            )

    @property
    def kind(self) -> str:
        """``"trained"``, ``"steering"`` or ``"untuned"``."""
        return "trained" if self.train else "steering" if self.steer else "untuned"


SPT_METHODS: Registry[SPTMethod] = Registry("SPT method")


def register_spt_method(method: SPTMethod, *, replace: bool = False) -> SPTMethod:
    """Make ``method`` a choice of the SPT experiment (``--methods``) and of the study.

    Raises:
        ValueError: a taken name (without ``replace``) or a name that is not an identifier.
    """
    return SPT_METHODS.register(method, replace=replace)


def control_heads(
    kind: str, heads: HeadSet, seed: int, norms: Callable[[], torch.Tensor] | None = None
) -> HeadSet:
    """One random head set of control ``kind`` matching ``heads``, seeded ``seed``.

    Raises:
        KeyError: an unknown kind.
        ValueError: a norm-matched kind without ``norms``.
    """
    control = CONTROL_KINDS[kind]
    if control.uses_norms and norms is None:
        raise ValueError(f"control kind {kind!r} needs the heads' W_O norms")
    grid = HeadGrid(heads.n_layers, heads.n_heads, heads.n_heads)
    values = norms() if control.uses_norms else torch.empty(0)
    (picked,), gap = control.draw(heads.heads, grid, 1, seed, values, NORM_TOLERANCE)
    source = f"{control.label} seed={seed}"
    source += "" if gap is None else f" (worst relative gap {gap:.3f})"
    return HeadSet(picked, heads.n_layers, heads.n_heads, source)


def _spt(inputs: MethodInputs) -> Tunable:
    return HeadDeltas(inputs.model, inputs.heads, tune_kv=inputs.tune_kv)


def _lora_heads(inputs: MethodInputs) -> Tunable:
    o = inputs.options
    return HeadDeltas(
        inputs.model, inputs.heads, tune_kv=inputs.tune_kv, rank=o["lora_rank"], seed=o["seed"]
    )


def _lora(inputs: MethodInputs) -> Tunable:
    return PeftLoRA(inputs.model, rank=inputs.options["lora_rank"], seed=inputs.options["seed"])


def _sft(inputs: MethodInputs) -> Tunable:
    return FullWeights(inputs.model)


def _control(kind: str) -> Callable[[MethodInputs], Tunable]:
    def build(inputs: MethodInputs) -> Tunable:
        seed = inputs.options["seed"] + inputs.draw
        drawn = control_heads(kind, inputs.heads, seed, inputs.norms)
        return HeadDeltas(inputs.model, drawn, tune_kv=inputs.tune_kv)

    return build


for _method in (
    SPTMethod("base", "base model (untuned)"),
    SPTMethod("spt", "SPT (selected heads)", _spt, counts_heads=True),
    SPTMethod("sft", "full fine-tuning", _sft),
    SPTMethod("lora", "LoRA (attention)", _lora, lr_option="lora_lr"),
    SPTMethod("random", "random heads", _control("uniform"), counts_heads=True, control="uniform"),
    SPTMethod(
        "random_layer",
        "layer-matched random heads",
        _control("layer_matched"),
        counts_heads=True,
        control="layer_matched",
    ),
    SPTMethod(
        "random_norm",
        "W_O-norm-matched random heads",
        _control("norm_matched"),
        counts_heads=True,
        control="norm_matched",
    ),
    SPTMethod(
        "lora_heads",
        "LoRA on the selected heads",
        _lora_heads,
        lr_option="lora_lr",
        counts_heads=True,
    ),
    SPTMethod("caa", "CAA steering", steer=prepare_caa),
    SPTMethod("iti", "ITI steering", steer=prepare_iti, counts_heads=True, wants_reference=True),
):
    register_spt_method(_method)
