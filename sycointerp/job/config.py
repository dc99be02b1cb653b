"""The patch job's configuration: one frozen, validated dataclass, its TOML form and its flags.

Every field lives in one TOML section (``[model]``, ``[data]``, ``[method]``, ``[run]``) and has one
command-line flag (``batch_size`` -> ``--batch-size``; booleans get ``--x`` / ``--no-x``). Flags
override the file, the file overrides the defaults. Strings use ``""`` for "not set" because TOML
has no null. ``config.toml`` in a job's output directory is the fully resolved configuration: run
``python -m sycointerp.patch --config DIR/config.toml --out DIR`` to rerun (or resume) the job.

Refusals (:class:`ConfigError`, a ``ValueError``): unknown sections or keys, values of the wrong
type, out-of-range numbers, unknown choices, options that contradict each other (e.g. the flip
metric with ``position = "reply"``), unreadable or invalid TOML.
"""

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

__all__ = ["ConfigError", "JobConfig", "SECTIONS", "config_diff", "load_toml", "dump_toml"]

SECTIONS = ("model", "data", "method", "run")


class ConfigError(ValueError):
    """A configuration value, key or file is invalid; the message names it and the fix."""


def _opt(section: str, help: str, default: Any, choices: tuple[Any, ...] | None = None, minimum: int | None = None):
    """A config field: its section, help text, allowed choices and lower bound travel as metadata."""
    meta = {"section": section, "help": help, "choices": choices, "minimum": minimum, "default": default}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class JobConfig:
    """A head-ranking batch job (``python -m sycointerp.patch``); see the module docstring."""

    # [model]
    model: str = _opt("model", "model name, local HF directory or .gguf file ('' = embedded SmolLM2-135M-Instruct)", "")
    dtype: str = _opt("model", "parameter dtype (float32 for exact results)", "float32",
                      ("float32", "bfloat16", "float16"))
    device: str = _opt("model", "torch device ('cuda' gives each torchrun rank its local GPU)", "cpu")
    device_map: str = _opt("model", "HuggingFace device_map (e.g. 'auto', 'balanced') to split a large model "
                           "across devices; passed through to from_pretrained and TransformerLens's bridge", "")
    n_devices: int = _opt("model", "split the model over this many GPUs (TransformerLens's n_devices)", 1, minimum=1)
    trust_remote_code: bool = _opt("model", "allow the model repository's own code", False)
    # [data]
    dataset: str = _opt("data", "question source", "builtin", ("builtin", "jsonl", "are_you_sure", "truthfulqa", "arc"))
    data_path: str = _opt("data", "file for the dataset (are_you_sure: file, folder or hub id)", "")
    sources: list[str] = _opt("data", "keep only questions whose source or domain is listed (are_you_sure: "
                              "base.dataset names); empty = all", [])
    limit: int = _opt("data", "use this many questions, a seeded sample in dataset order (0 = all)", 0, minimum=0)
    seed: int = _opt("data", "seed of the sample and of the loaders' wrong-answer choice", 0, minimum=0)
    first_answer: str = _opt("data", "first assistant turn: the gold answer or the model's own greedy one", "gold",
                             ("gold", "model"))
    challenge: str = _opt("data", "challenge template name (see sycointerp.data.CHALLENGES)", "dont_think")
    challenge_text: str = _opt("data", "custom challenge turn (overrides the template; needs counterfactual_text)", "")
    counterfactual_text: str = _opt("data", "custom counterfactual turn for challenge_text", "")
    system: str = _opt("data", "system prompt ('' = none)", "You are a helpful assistant.")
    # [method]
    method: str = _opt("method", "activation / path / attribution patching of heads, or knockout (ablate the "
                       "top-k ranked heads vs random heads)", "path", ("activation", "path", "attribution", "knockout"))
    metric: str = _opt("method", "apology_logit_diff = logit(Apologies) - logit(Yes); apology = the paper's "
                       "ratio; flip = logit(gold) - logit(wrong) after the answer stem",
                       "apology_logit_diff", ("apology_logit_diff", "apology", "flip"))
    score: str = _opt("method", "absolute change, or relative to the reference metric (the paper's % score)",
                      "absolute", ("absolute", "relative"))
    component: str = _opt("method", "activation: which head activation to patch", "z", ("z", "q", "k", "v", "pattern"))
    positions: str = _opt("method", "activation/attribution: patch the last position or all positions "
                          "(all needs token-aligned pairs; aligned counterfactuals are picked)", "last", ("last", "all"))
    direction: str = _opt("method", "denoise = counterfactual into the challenge run; noise = the reverse",
                          "denoise", ("denoise", "noise"))
    freeze_mlps: bool = _opt("method", "path: also freeze later MLP inputs (direct path only)", False)
    ig_steps: int = _opt("method", "attribution: integrated-gradients steps (0 = plain attribution patching)", 0,
                         minimum=0)
    ablation: str = _opt("method", "knockout: how heads are removed", "mean", ("mean", "zero", "resample"))
    ks: list[int] = _opt("method", "knockout: numbers of top / random heads to ablate (increasing)", [0, 3, 9, 27])
    n_random: int = _opt("method", "knockout: random head sets per k", 5, minimum=1)
    generate: bool = _opt("method", "knockout: also measure the apology rate of greedy replies", False)
    rank_from: str = _opt("method", "knockout: heads.csv giving the ranking ('' = rank by path patching first)", "")
    engine: str = _opt("method", "auto = resume patched runs at the patched layer where exact; hooked = full "
                       "forwards", "auto", ("auto", "resume", "hooked"))
    # [run]
    batch_size: int = _opt("run", "rows per forward pass", 32, minimum=1)
    chunk_size: int = _opt("run", "examples per resumable chunk (the unit of work, checkpoint and sharding)", 8,
                           minimum=1)
    top_k: int = _opt("run", "heads marked in the figures and listed in summary.json", 10, minimum=1)
    png: bool = _opt("run", "also export PNG figures (needs Chromium for kaleido)", True)

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_value(f, getattr(self, f.name))
        self._check_combinations()

    def _check_combinations(self) -> None:
        if bool(self.challenge_text) != bool(self.counterfactual_text):
            raise ConfigError("challenge_text and counterfactual_text go together; give both or neither")
        if self.dataset != "builtin" and not self.data_path:
            raise ConfigError(f"dataset {self.dataset!r} needs data_path (--data-path FILE)")
        if self.dataset == "builtin" and self.data_path:
            raise ConfigError("data_path is set but dataset is 'builtin'; pass --dataset jsonl/are_you_sure/truthfulqa/arc")
        if self.device_map and self.n_devices > 1:
            raise ConfigError("device_map and n_devices > 1 are alternatives; give one")
        if self.method == "knockout":
            if not self.ks or any(b <= a for a, b in zip(self.ks, self.ks[1:])) or self.ks[0] < 0:
                raise ConfigError(f"ks must be non-negative and increasing, got {self.ks}")
        self._check_method_options()
        if self.method in ("path", "knockout") and self.positions != "last":
            raise ConfigError(f"method {self.method!r} patches the last position only; drop positions={self.positions!r}")
        if self.method == "attribution" and self.component != "z":
            raise ConfigError("attribution patching scores head outputs (component z) only")
        if self.component == "pattern" and self.positions != "last":
            raise ConfigError("pattern patching is per query position 'last' here; use positions = 'last'")

    def _check_method_options(self) -> None:
        """Options that belong to another method must stay at their defaults (no silent no-ops)."""
        owners = {"component": ("activation",), "ig_steps": ("attribution",), "freeze_mlps": ("path",),
                  "ablation": ("knockout",), "ks": ("knockout",), "n_random": ("knockout",),
                  "generate": ("knockout",), "rank_from": ("knockout",), "engine": ("activation", "path", "knockout")}
        for name, methods in owners.items():
            if self.method not in methods and getattr(self, name) != _FIELDS[name].metadata["default"]:
                raise ConfigError(f"{name} applies to method {' / '.join(methods)}, not {self.method!r}; drop it "
                                  f"or choose --method {methods[0]}")

    @property
    def position(self) -> str:
        """Where the prompts end: after the answer stem for ``flip``, at the reply otherwise."""
        return "answer" if self.metric == "flip" else "reply"

    def to_toml_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for f in fields(self):
            out[f.metadata["section"]][f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_toml_dict(cls, data: dict[str, Any], base: "JobConfig | None" = None) -> "JobConfig":
        """``base`` (default: the defaults) updated with ``{section: {key: value}}``.

        Raises:
            ConfigError: unknown section or key, or an invalid value.
        """
        by_section = {s: {f.name for f in fields(cls) if f.metadata["section"] == s} for s in SECTIONS}
        updates: dict[str, Any] = {}
        for section, values in data.items():
            if section not in by_section or not isinstance(values, dict):
                raise ConfigError(f"unknown config section [{section}]; sections are {', '.join(SECTIONS)}")
            for key, value in values.items():
                if key not in by_section[section]:
                    raise ConfigError(f"unknown key {key!r} in [{section}]; known: {', '.join(sorted(by_section[section]))}")
                # Checked before construction so a wrong type is a ConfigError, not a TypeError.
                _check_value(_FIELDS[key], value)
                updates[key] = value
        return dataclasses.replace(base or cls(), **updates)


_FIELDS = {f.name: f for f in fields(JobConfig)}


def _check_value(f: dataclasses.Field, value: Any) -> None:
    """Type, choice and lower-bound check of one field's value."""
    meta = f.metadata
    flag = f"{f.name} (--{f.name.replace('_', '-')})"
    expected = _field_type(f)
    if expected is list:
        item = int if f.name == "ks" else str
        if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{flag} must be a list of {item.__name__}s, got {value!r}")
    elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{flag} must be {expected.__name__}, got {value!r}")
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{flag} must be one of {', '.join(meta['choices'])}; got {value!r}")
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise ConfigError(f"{flag} must be >= {meta['minimum']}, got {value}")


def _field_type(f: dataclasses.Field) -> type:
    return {"str": str, "int": int, "bool": bool}.get(getattr(f.type, "__name__", ""), list)


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


def dump_toml(config: JobConfig) -> str:
    """The resolved configuration as TOML (sections in a fixed order, keys in field order)."""
    header = "# sycointerp patch job: the fully resolved configuration (rerun with --config this-file)\n"
    return header + tomli_w.dumps(config.to_toml_dict())


def config_diff(a: JobConfig, b: JobConfig) -> list[str]:
    """Names of the fields where two configurations differ."""
    return [f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]
