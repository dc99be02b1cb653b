"""The SPT run's configuration (``sycointerp spt``): sections model, data, heads, train,
eval, run.

TOML form and flags come from :mod:`sycointerp._config`, as for the patch job.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sycointerp._config import ConfigError, TomlConfig, opt
from sycointerp.data.templates import CHALLENGES, PAPER_CHALLENGE

__all__ = ["SPTConfig", "MethodRun", "method_runs"]


def _metrics() -> tuple[str, ...]:
    """The registered metrics (:data:`sycointerp.metrics.METRICS`)."""
    from sycointerp.metrics import METRICS

    return METRICS.names()


def _recipes() -> tuple[str, ...]:
    """The head-selection recipes (:data:`sycointerp.spt.selection.SELECTION_RECIPES`)."""
    from sycointerp.spt.selection import SELECTION_RECIPES

    return SELECTION_RECIPES.names()


def _registered() -> tuple[str, ...]:
    """The SPT methods of the registry (:data:`sycointerp.spt.methods.SPT_METHODS`), asked when a
    configuration is validated (importing it loads torch, which ``--help`` must not)."""
    from sycointerp.spt.methods import SPT_METHODS

    return SPT_METHODS.names()


@dataclass(frozen=True)
class SPTConfig(TomlConfig):
    """Tune the sycophancy heads (and baselines), evaluate before and after."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "data", "heads", "train", "eval", "run")

    # [model]
    model: str = opt(
        "model",
        "model name, local HF directory or .gguf file ('' = embedded SmolLM2-135M-Instruct)",
        "",
    )
    dtype: str = opt("model", "parameter dtype", "float32", ("float32", "bfloat16"))
    device: str = opt("model", "torch device ('cuda' gives each process its local GPU)", "cpu")
    trust_remote_code: bool = opt("model", "allow the model repository's own code", False)
    # [data]
    dataset: str = opt(
        "data",
        "question source for training and held-out evaluation",
        "builtin",
        ("builtin", "jsonl", "are_you_sure", "truthfulqa", "arc"),
    )
    data_path: str = opt("data", "file for the dataset", "")
    eval_path: str = opt(
        "data", "separate JSONL of evaluation questions ('' = a held-out split of the dataset)", ""
    )
    eval_fraction: float = opt(
        "data", "share of the dataset held out for evaluation (without eval_path)", 0.5
    )
    limit: int = opt("data", "use this many questions of the dataset (0 = all)", 0, minimum=0)
    seed: int = opt("data", "seed of the split, the dialogues and training", 0, minimum=0)
    kinds: list[str] = opt("data", "training dialogue kinds", ["insist", "revise"])
    system: str = opt("data", "system prompt ('' = none)", "You are a helpful assistant.")
    # [heads]
    heads_file: str = opt(
        "heads",
        "heads.csv of a patch job ('' = rank by path patching on the training questions)",
        "",
    )
    top_k: int = opt(
        "heads", "number of heads to tune (0 = 4% of all heads, as in the paper)", 0, minimum=0
    )
    selection: str = opt(
        "heads",
        "how the heads are ranked when no heads_file is given: a registered recipe "
        "(sycointerp.spt.selection.SELECTION_RECIPES: path = path patching with rank_metric on "
        "the paper's wording; pooled_wordings = on all 12 challenge wordings; loss_gradient = "
        "the SPT loss's gradient per head; probe = held-out probe accuracy)",
        "path",
        _recipes,
    )
    rank_metric: str = opt(
        "heads",
        "the registered metric that ranks the heads by path patching (selection path or "
        "pooled_wordings; sycointerp.metrics.METRICS: apology_logit_diff, apology, flip, ...)",
        "apology_logit_diff",
        _metrics,
    )
    pairs_per_wording: int = opt(
        "heads",
        "selection pooled_wordings: training questions paired with each of the 12 wordings "
        "(0 = all; the cost is 12 x this many pairs)",
        0,
        minimum=0,
    )
    draws: int = opt(
        "heads",
        "random head sets drawn for each control method (random, random_layer, random_norm); "
        "with more than 1, draw d runs as '<method>-<d>'",
        1,
        minimum=1,
    )
    tune_kv: str = opt(
        "heads",
        "tune K/V slices: auto = only for multi-head attention (the paper's rule)",
        "auto",
        ("auto", "yes", "no"),
    )
    # [train]
    methods: list[str] = opt(
        "train",
        "what to run, in order: registered SPT methods (sycointerp.spt.methods.SPT_METHODS; built "
        "in: base, spt, sft, lora, random, random_layer, random_norm, lora_heads, caa, iti; base "
        "= no tuning)",
        ["base", "spt"],
    )
    steps: int = opt("train", "optimizer steps per method", 60, minimum=1)
    lr: float = opt("train", "peak learning rate of spt / sft / random", 1e-4, minimum=0)
    lora_lr: float = opt("train", "peak learning rate of lora / lora_heads", 5e-4, minimum=0)
    lora_rank: int = opt("train", "LoRA rank", 16, minimum=1)
    batch_size: int = opt("train", "examples per micro-batch and process", 8, minimum=1)
    grad_accum: int = opt("train", "micro-batches per step", 1, minimum=1)
    warmup_steps: int = opt("train", "linear warmup steps", 5, minimum=0)
    weight_decay: float = opt("train", "AdamW weight decay", 0.1, minimum=0)
    checkpoint_every: int = opt(
        "train", "checkpoint every N steps and at the end (0 = no checkpoints)", 0, minimum=0
    )
    steer_layer: int = opt(
        "train",
        "caa: the block whose incoming residual stream is steered (-1 = the middle block)",
        -1,
        minimum=-1,
    )
    caa_alphas: list[float] = opt(
        "train",
        "caa: coefficients tried on the training pairs (negative = away from the challenge; "
        "write --caa-alphas=-1,-2)",
        [-0.25, -0.5, -1.0, -2.0, -4.0],
    )
    steer_toward: bool = opt(
        "train",
        "caa / iti: steer toward sycophancy (positive coefficients), an experiment in inducing "
        "it; off: every coefficient must be negative (away from it)",
        False,
    )
    iti_alphas: list[float] = opt(
        "train",
        "iti: coefficients tried, in standard deviations along each head's direction "
        "(--iti-alphas=-5,-10)",
        [-1.0, -2.0, -5.0, -10.0, -15.0],
    )
    # [eval]
    eval_limit: int = opt(
        "eval", "evaluate on this many held-out questions (0 = all)", 0, minimum=0
    )
    max_new_tokens: int = opt("eval", "greedy tokens of the reply to the challenge", 48, minimum=1)
    answer_tokens: int = opt(
        "eval", "greedy tokens of the first and the final answer", 24, minimum=1
    )
    final_stem: bool = opt(
        "eval",
        "prefill the answer stem in the final answer turn too (off: generated freely, as in the "
        "paper)",
        False,
    )
    challenge: str = opt(
        "eval", "challenge template of the evaluation", PAPER_CHALLENGE, tuple(CHALLENGES)
    )
    pressure_rounds: int = opt(
        "eval",
        "rounds of push-back in one dialogue (challenge paraphrases rotated): Turn-of-Flip and "
        "Number-of-Flip; 1 = the paper's single challenge",
        5,
        minimum=1,
    )
    stance_variants: list[str] = opt(
        "eval",
        "controlled variants, one round each: wrong (first answers prefilled wrong), user (the "
        "user names an answer: gold after a wrong one, wrong after a right one); '' = none",
        ["wrong", "user"],
    )
    control_stances: bool = opt(
        "eval",
        "give the random-head controls every round and variant of the stance evaluation too "
        "(off: their first round only, the protocol's cost)",
        True,
    )
    kl_text: str = opt(
        "eval", "plain-text file for the KL divergence to the base model ('' = skip)", ""
    )
    kl_passages: int = opt("eval", "passages of kl_text (first 128 tokens each)", 200, minimum=1)
    arc_path: str = opt("eval", "ARC-style JSONL for multiple-choice accuracy ('' = skip)", "")
    arc_limit: int = opt("eval", "ARC questions scored (0 = all)", 200, minimum=0)
    opinion_path: str = opt("eval", "Anthropic opinion-matching JSONL ('' = skip)", "")
    opinion_limit: int = opt("eval", "opinion items scored (0 = all)", 200, minimum=0)
    eval_batch_size: int = opt("eval", "prompts per generation batch", 16, minimum=1)
    repatch: bool = opt(
        "eval",
        "re-run path patching on the SPT-tuned model over the ranking's training pairs and "
        "write the before / after comparison (spt only, heads ranked by this run with selection "
        "path)",
        True,
    )
    # [run]
    save_model: bool = opt(
        "run", "also write each tuned model as a full HuggingFace checkpoint", False
    )

    def __post_init__(self) -> None:
        self.check_fields()
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(
                f"eval_fraction (--eval-fraction) must be in (0, 1), got {self.eval_fraction}"
            )
        known = _registered()
        bad = [m for m in self.methods if m not in known]
        if bad or not self.methods or len(set(self.methods)) != len(self.methods):
            raise ConfigError(
                f"methods must be distinct names among {', '.join(known)}; got {self.methods}"
            )
        if set(self.kinds) - {"insist", "revise"} or not self.kinds:
            raise ConfigError(
                f"kinds must be a non-empty subset of insist, revise; got {self.kinds}"
            )
        if set(self.stance_variants) - {"wrong", "user"}:
            raise ConfigError(
                f"stance_variants (--stance-variants) must be among wrong, user; "
                f"got {self.stance_variants}"
            )
        if self.dataset != "builtin" and not self.data_path:
            raise ConfigError(f"dataset {self.dataset!r} needs data_path (--data-path FILE)")
        for name in ("lr", "lora_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(
                    f"{name} (--{name.replace('_', '-')}) must be > 0, got {getattr(self, name)}"
                )
        if (
            self.dataset == "arc"
            and self.arc_path
            and Path(self.arc_path).resolve() == Path(self.data_path).resolve()
        ):
            raise ConfigError(
                "arc_path is the training data file: ARC accuracy would be measured on trained "
                "questions; pass a held-out ARC split as --arc-path"
            )
        for method, name in (("caa", "caa_alphas"), ("iti", "iti_alphas")):
            if method in self.methods:  # the coefficients of a method not run are not read
                self._check_alphas(name)
        if self.warmup_steps >= self.steps:
            raise ConfigError(
                f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})"
            )

    def _check_alphas(self, name: str) -> None:
        """Steering coefficients: finite, non-zero, all on the side ``steer_toward`` names.

        Raises:
            ConfigError: naming the option, the bad value and the fix.
        """
        flag, alphas = f"{name} (--{name.replace('_', '-')})", getattr(self, name)
        if not alphas:
            raise ConfigError(f"{flag} needs at least one value")
        bad = [a for a in alphas if not math.isfinite(a) or a == 0]
        if bad:
            raise ConfigError(
                f"{flag} has {bad[0]}: a coefficient must be finite and non-zero (0 is the "
                "unsteered model)"
            )
        wrong = [a for a in alphas if (a > 0) != self.steer_toward]
        if wrong and not self.steer_toward:
            raise ConfigError(
                f"{flag} has {wrong[0]} > 0, which steers toward sycophancy; use negative values "
                f"(--{name.replace('_', '-')}=-1,-2), or pass --steer-toward to induce it"
            )
        if wrong:
            raise ConfigError(
                f"{flag} has {wrong[0]} < 0, which steers away from sycophancy, but "
                "--steer-toward asks to induce it; use positive values"
            )

    def runs(self) -> list["MethodRun"]:
        """The method runs of this configuration, in order (see :func:`method_runs`)."""
        return method_runs(self.methods, self.draws)

    def check_files(self) -> None:
        """Every file the run reads exists, checked before anything is trained.

        Raises:
            ConfigError: naming the option and the missing path.
        """
        for name in ("heads_file", "eval_path", "kl_text", "arc_path", "opinion_path"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(
                    f"{name} (--{name.replace('_', '-')}) {path} does not exist or is not a file"
                )


@dataclass(frozen=True)
class MethodRun:
    """One tuned (or untuned) model of an SPT run.

    Attributes:
        name: its output folder and row name (``random_layer-2``).
        method: a registered SPT method (:data:`sycointerp.spt.methods.SPT_METHODS`).
        draw: which random draw (0 unless a control with ``draws > 1``).
    """

    name: str
    method: str
    draw: int = 0

    @property
    def is_control(self) -> bool:
        """Whether the method tunes a drawn control head set (it runs once per draw)."""
        from sycointerp.spt.methods import SPT_METHODS

        return SPT_METHODS[self.method].control is not None


def method_runs(methods: list[str], draws: int) -> list[MethodRun]:
    """Every method once, each control method ``draws`` times (``<method>-<d>`` when
    ``draws > 1``)."""
    from sycointerp.spt.methods import SPT_METHODS

    runs = []
    for method in methods:
        if SPT_METHODS[method].control is not None and draws > 1:
            runs += [MethodRun(f"{method}-{d}", method, d) for d in range(draws)]
        else:
            runs.append(MethodRun(method, method))
    return runs
