"""The patch job's configuration: one frozen, validated dataclass (TOML form and flags:
``sycointerp._config``).

Sections ``[model]``, ``[data]``, ``[method]``, ``[run]``. ``config.toml`` in a job's output
directory is the fully resolved configuration: run ``python -m sycointerp.patch --config
DIR/config.toml --out DIR`` to rerun (or resume) the job.

Refusals (:class:`ConfigError`): those of :mod:`sycointerp._config`, plus options that contradict
each other (e.g. ``challenge_text`` without ``counterfactual_text``) or belong to another method.
"""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from sycointerp._config import (
    ConfigError,
    TomlConfig,
    config_diff,
    load_toml,
)
from sycointerp._config import (
    dump_toml as _dump,
)
from sycointerp._config import (
    opt as _opt,
)
from sycointerp.data.templates import CHALLENGES

__all__ = ["ConfigError", "PatchConfig", "SECTIONS", "config_diff", "load_toml", "dump_toml"]

SECTIONS = ("model", "data", "method", "run")
# The knockout mode's own options (it ranks by path patching, then ablates the ranked heads).
KNOCKOUT_OPTIONS = ("ablation", "ks", "n_random", "generate", "rank_from", "engine")
# Options read by the methods of the registry (PatchMethod.options) or by knockout: each must stay
# at its default unless the chosen method reads it.
METHOD_OPTIONS = ("component", "direction", "freeze_mlps", "ig_steps", *KNOCKOUT_OPTIONS)


def _method_choices() -> tuple[str, ...]:
    """The registered patching methods (:data:`sycointerp.patching.methods.PATCH_METHODS`), then
    the knockout mode."""
    from sycointerp.patching.methods import PATCH_METHODS

    return (*PATCH_METHODS.names(), "knockout")


def _metric_choices() -> tuple[str, ...]:
    """The registered metrics (:data:`sycointerp.metrics.METRICS`)."""
    from sycointerp.metrics import METRICS

    return METRICS.names()


@dataclass(frozen=True)
class PatchConfig(TomlConfig):
    """A head-ranking batch job (``python -m sycointerp.patch``); see the module docstring."""

    SECTIONS: ClassVar[tuple[str, ...]] = SECTIONS

    # [model]
    model: str = _opt(
        "model",
        "model name, local HF directory or .gguf file ('' = embedded SmolLM2-135M-Instruct)",
        "",
    )
    dtype: str = _opt(
        "model",
        "parameter dtype (float32 for exact results)",
        "float32",
        ("float32", "bfloat16", "float16"),
    )
    device: str = _opt(
        "model", "torch device ('cuda' gives each torchrun rank its local GPU)", "cpu"
    )
    device_map: str = _opt(
        "model",
        "HuggingFace device_map to split a large model across devices or offload layers: a "
        "strategy ('auto', 'balanced', 'balanced_low_0', 'sequential') or a JSON object of "
        "module -> GPU index, 'cpu' or 'disk'; patching keeps its fast engine on any placement",
        "",
    )
    offload_folder: str = _opt(
        "model",
        "directory for the weights a device_map places on 'disk' (each torchrun rank uses its "
        "own rank-N subfolder)",
        "",
    )
    n_devices: int = _opt(
        "model", "split the model over this many GPUs (TransformerLens's n_devices)", 1, minimum=1
    )
    devices_per_rank: int = _opt(
        "model",
        "under torchrun, the local GPUs each rank places its own copy over (rank r takes GPUs "
        "r*G .. r*G+G-1; a device_map's GPU indices count within the group)",
        1,
        minimum=1,
    )
    trust_remote_code: bool = _opt("model", "allow the model repository's own code", False)
    # [data]
    dataset: str = _opt(
        "data",
        "question source",
        "builtin",
        ("builtin", "jsonl", "are_you_sure", "truthfulqa", "arc"),
    )
    data_path: str = _opt("data", "file for the dataset (are_you_sure: file, folder or hub id)", "")
    sources: list[str] = _opt(
        "data",
        "keep only questions whose source or domain is listed (are_you_sure: "
        "base.dataset names); empty = all",
        [],
    )
    limit: int = _opt(
        "data", "use this many questions, a seeded sample in dataset order (0 = all)", 0, minimum=0
    )
    seed: int = _opt(
        "data", "seed of the sample and of the loaders' wrong-answer choice", 0, minimum=0
    )
    first_answer: str = _opt(
        "data",
        "first assistant turn: the gold answer or the model's own greedy one",
        "gold",
        ("gold", "model"),
    )
    challenge: str = _opt(
        "data", "challenge template name (see sycointerp.data.CHALLENGES)", "dont_think"
    )
    challenge_text: str = _opt(
        "data", "custom challenge turn (overrides the template; needs counterfactual_text)", ""
    )
    counterfactual_text: str = _opt("data", "custom counterfactual turn for challenge_text", "")
    system: str = _opt("data", "system prompt ('' = none)", "You are a helpful assistant.")
    # [method]
    method: str = _opt(
        "method",
        "a registered patching method (built in: activation, path, attribution; "
        "sycointerp.patching.methods.PATCH_METHODS), or knockout (ablate the top-k ranked heads "
        "vs random heads)",
        "path",
        _method_choices,
    )
    metric: str = _opt(
        "method",
        "a registered metric (sycointerp.metrics.METRICS); built in: apology_logit_diff = "
        "logit(Apologies) - logit(Yes); apology = the paper's ratio; flip = logit(gold) - "
        "logit(wrong) after the answer stem",
        "apology_logit_diff",
        _metric_choices,
    )
    score: str = _opt(
        "method",
        "absolute change, or relative to the reference metric (the paper's % score)",
        "absolute",
        ("absolute", "relative"),
    )
    component: str = _opt(
        "method", "activation: which head activation to patch", "z", ("z", "q", "k", "v", "pattern")
    )
    positions: str = _opt(
        "method",
        "activation/attribution: patch the last position or all positions "
        "(all needs token-aligned pairs; aligned counterfactuals are picked)",
        "last",
        ("last", "all"),
    )
    direction: str = _opt(
        "method",
        "denoise = counterfactual into the challenge run; noise = the reverse",
        "denoise",
        ("denoise", "noise"),
    )
    freeze_mlps: bool = _opt(
        "method", "path: also freeze later MLP inputs (direct path only)", False
    )
    ig_steps: int = _opt(
        "method",
        "attribution: integrated-gradients steps (0 = plain attribution patching)",
        0,
        minimum=0,
    )
    ablation: str = _opt(
        "method", "knockout: how heads are removed", "mean", ("mean", "zero", "resample")
    )
    ks: list[int] = _opt(
        "method", "knockout: numbers of top / random heads to ablate (increasing)", [0, 3, 9, 27]
    )
    n_random: int = _opt("method", "knockout: random head sets per k", 5, minimum=1)
    generate: bool = _opt(
        "method", "knockout: also measure the apology rate of greedy replies", False
    )
    rank_from: str = _opt(
        "method", "knockout: heads.csv giving the ranking ('' = rank by path patching first)", ""
    )
    engine: str = _opt(
        "method",
        "auto = resume patched runs at the patched layer where exact; hooked = full forwards",
        "auto",
        ("auto", "resume", "hooked"),
    )
    # [run]
    batch_size: int = _opt("run", "rows per forward pass", 32, minimum=1)
    chunk_size: int = _opt(
        "run",
        "examples per resumable chunk (the unit of work, checkpoint and sharding)",
        8,
        minimum=1,
    )
    top_k: int = _opt(
        "run", "heads marked in the figures and listed in summary.json", 10, minimum=1
    )
    png: bool = _opt("run", "also export PNG figures (needs Chromium for kaleido)", True)
    vector: list[str] = _opt(
        "run", "also export every figure as these vector formats: svg, pdf (needs Chromium)", []
    )

    def __post_init__(self) -> None:
        self.check_fields()
        self._check_combinations()

    def _check_combinations(self) -> None:
        bad = [f for f in self.vector if f not in ("svg", "pdf")]
        if bad or len(set(self.vector)) != len(self.vector):
            raise ConfigError(
                f"vector (--vector) must be distinct among svg, pdf; got {self.vector}"
            )
        if self.challenge not in CHALLENGES:
            raise ConfigError(
                f"unknown challenge template {self.challenge!r} (--challenge); choose from "
                f"{', '.join(CHALLENGES)}, or give challenge_text and counterfactual_text"
            )
        if bool(self.challenge_text) != bool(self.counterfactual_text):
            raise ConfigError(
                "challenge_text and counterfactual_text go together; give both or neither"
            )
        if self.dataset != "builtin" and not self.data_path:
            raise ConfigError(f"dataset {self.dataset!r} needs data_path (--data-path FILE)")
        if self.dataset == "builtin" and self.data_path:
            raise ConfigError(
                "data_path is set but dataset is 'builtin'; pass --dataset "
                "jsonl/are_you_sure/truthfulqa/arc"
            )
        self._check_placement()
        if self.method == "knockout":
            if not self.ks or any(b <= a for a, b in zip(self.ks, self.ks[1:])) or self.ks[0] < 0:
                raise ConfigError(f"ks must be non-negative and increasing, got {self.ks}")
        self._check_method_options()
        if self.positions not in self.supported_positions():
            raise ConfigError(
                f"method {self.method!r} patches the last position only; drop "
                f"positions={self.positions!r}"
            )
        if self.component == "pattern" and self.positions != "last":
            raise ConfigError(
                "pattern patching is per query position 'last' here; use positions = 'last'"
            )
        if self.challenge_text and self.challenge_text.strip() == self.counterfactual_text.strip():
            raise ConfigError(
                "challenge_text and counterfactual_text are the same text: the pair would measure "
                "nothing; give a counterfactual that differs from the challenge"
            )

    def _check_placement(self) -> None:
        """The model placement options, which must agree with each other.

        Raises:
            ConfigError: a device_map that is not a strategy or a valid JSON map; one that
                offloads to disk without offload_folder, or offload_folder without one;
                n_devices together with device_map or devices_per_rank.
        """
        from sycointerp.placement import offloads_to_disk, parse_device_map

        try:
            placement = parse_device_map(self.device_map)
        except ValueError as err:
            raise ConfigError(f"{err} (--device-map)") from None
        if self.n_devices > 1 and (placement is not None or self.devices_per_rank > 1):
            raise ConfigError(
                "n_devices splits one copy over GPUs; device_map / devices_per_rank are the "
                "alternative: give one"
            )
        if offloads_to_disk(placement) and not self.offload_folder:
            raise ConfigError(
                "the device_map places modules on 'disk': give --offload-folder DIR for their "
                "weights"
            )
        if self.offload_folder and placement is None:
            raise ConfigError(
                "--offload-folder is used only with a --device-map that offloads to 'disk'; "
                "give one or drop --offload-folder"
            )

    def placement(self) -> str | dict[str, str | int] | None:
        """The parsed ``device_map`` (``None``: the model on ``device``)."""
        from sycointerp.placement import parse_device_map

        return parse_device_map(self.device_map)

    def option_owners(self, name: str) -> tuple[str, ...]:
        """The methods (registered ones and knockout) that read option ``name``."""
        from sycointerp.patching.methods import PATCH_METHODS

        owners = tuple(m.name for m in PATCH_METHODS.values() if name in m.options)
        return (*owners, "knockout") if name in KNOCKOUT_OPTIONS else owners

    def supported_positions(self) -> tuple[str, ...]:
        """The ``positions`` values the chosen method can patch (knockout: the last only)."""
        from sycointerp.patching.methods import PATCH_METHODS

        return ("last",) if self.method == "knockout" else PATCH_METHODS[self.method].positions

    def _check_method_options(self) -> None:
        """Options that belong to another method must stay at their defaults (no silent no-ops),
        and a registered method reads only options the job has."""
        if self.method != "knockout":
            from sycointerp.patching.methods import PATCH_METHODS

            names = {f.name for f in dataclasses.fields(self)}
            unknown = [o for o in PATCH_METHODS[self.method].options if o not in names]
            if unknown:
                raise ConfigError(
                    f"patching method {self.method!r} reads {', '.join(unknown)}, which the patch "
                    "job has no option for; register it with options named after PatchConfig fields"
                )
        for name in METHOD_OPTIONS:
            methods = self.option_owners(name)
            if self.method not in methods and getattr(self, name) != self.default_of(name):
                raise ConfigError(
                    f"{name} applies to method {' / '.join(methods)}, not {self.method!r}; drop it "
                    f"or choose --method {methods[0]}"
                )

    @property
    def position(self) -> str:
        """Where the prompts end: the metric's registered position (``flip``: after the answer
        stem; the apology metrics: at the reply)."""
        from sycointerp.metrics import METRICS

        return METRICS[self.metric].position

    @property
    def aligned(self) -> bool:
        """Whether the chosen method needs token-aligned pairs with these options."""
        from sycointerp.patching.methods import PATCH_METHODS

        if self.method == "knockout":
            return False
        return PATCH_METHODS[self.method].aligned(self.__dict__)


def dump_toml(config: PatchConfig) -> str:
    """The resolved configuration as TOML."""
    return _dump(
        config,
        "sycointerp patch job: the fully resolved configuration (rerun with --config this-file)",
    )
