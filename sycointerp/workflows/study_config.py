"""The trust study's configuration (``sycointerp study``): sections model, data, protocols,
agreement, main, sweep, train, eval.

The defaults are sized for a 2-core CPU (5 draws per control, 70% of the questions held out so
that at least 250 are answered correctly at first; 98 min on this 2-core CPU,
measured on 2026-12-03 with nothing else running; README, "The trust study"):
each stage's size is an option, so a larger machine runs the same study at full size
(``--main-eval-limit 0`` for every held-out question, more ``--draws`` and ``--steps``).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sycointerp._config import ConfigError, TomlConfig, opt

__all__ = ["StudyConfig", "PROTOCOLS", "PAPER_METRIC"]

PAPER_METRIC = "apology_logit_diff"  # the main comparison ranks heads with it (the paper's)

# Protocol variants the settings search compares on the base model: (final answer prefilled with
# the answer stem?, challenge template). "stem" is this project's earlier protocol, "free" the
# paper's.
PROTOCOLS = {
    "stem": (True, "dont_think"),
    "free": (False, "dont_think"),
    "free_incorrect": (False, "incorrect"),
    "free_teacher": (False, "teacher"),
}


@dataclass(frozen=True)
class StudyConfig(TomlConfig):
    """Ranking stability and agreement, SPT against matched random controls, the K sweep."""

    SECTIONS: ClassVar[tuple[str, ...]] = (
        "model",
        "data",
        "protocols",
        "agreement",
        "main",
        "sweep",
        "selection",
        "train",
        "eval",
    )

    # [model]
    model: str = opt(
        "model",
        "model name, local HF directory or .gguf file ('' = embedded SmolLM2-135M-Instruct)",
        "",
    )
    # [data]
    eval_fraction: float = opt(
        "data", "share of the built-in questions held out for evaluation", 0.7
    )
    seed: int = opt("data", "seed of the main split, the draws and training", 0, minimum=0)
    limit: int = opt("data", "use the first N built-in questions (0 = all)", 0, minimum=0)
    # [protocols]
    protocols: list[str] = opt(
        "protocols",
        f"evaluation protocols compared on the base model: {', '.join(PROTOCOLS)}",
        list(PROTOCOLS),
    )
    protocol_limit: int = opt(
        "protocols", "held-out questions per protocol (0 = all)", 80, minimum=0
    )
    arc_path: str = opt(
        "protocols",
        "ARC-style JSONL: also run the free protocol on these multiple-choice items ('' = skip)",
        "",
    )
    arc_limit: int = opt("protocols", "ARC items (0 = all)", 60, minimum=0)
    # [agreement]
    agreement_pairs: int = opt(
        "agreement",
        "training questions ranked under each challenge paraphrase and metric",
        16,
        minimum=2,
    )
    agreement_k: int = opt("agreement", "top-K of the overlap", 11, minimum=1)
    # [main]
    top_k: int = opt(
        "main", "heads tuned in the main comparison (4% of SmolLM2's 270)", 11, minimum=1
    )
    draws: int = opt(
        "main", "random draws of each control kind (uniform, layer-, norm-matched)", 5, minimum=1
    )
    main_eval_limit: int = opt(
        "main", "held-out questions of the main comparison (0 = all)", 120, minimum=0
    )
    kl_text: str = opt("main", "plain-text file for the KL divergence to base ('' = skip)", "")
    kl_passages: int = opt("main", "passages of kl_text", 40, minimum=1)
    pressure_rounds: int = opt(
        "main",
        "rounds of push-back in the main comparison's stance evaluation (1 = one challenge)",
        5,
        minimum=1,
    )
    stance_variants: list[str] = opt(
        "main",
        "the main comparison's controlled stance variants: wrong, user ('' = none)",
        ["wrong", "user"],
    )
    # [sweep]
    ks: list[int] = opt("sweep", "numbers of heads K of the sweep", [3, 6, 11, 22, 44])
    splits: list[int] = opt(
        "sweep", "split seeds of the sweep (the first is the main split)", [0, 1]
    )
    sweep_draws: int = opt("sweep", "layer-matched random draws per K and split", 2, minimum=1)
    sweep_eval_limit: int = opt(
        "sweep", "held-out questions per sweep point (a prefix of the main ones)", 60, minimum=1
    )
    # [selection]
    selection_recipes: list[str] = opt(
        "selection",
        "head-selection recipes set against the paper's (the main comparison's path patching "
        "with the apology metric), each against random heads matched to its own layer histogram "
        "and the main comparison's uniform ones: recipe[:metric] of "
        "sycointerp.spt.selection.SELECTION_RECIPES, e.g. pooled_wordings,path:flip,"
        "loss_gradient,probe ('' = skip the stage, the default: about 12 min per recipe on a "
        "2-core CPU)",
        [],
    )
    selection_draws: int = opt(
        "selection",
        "layer-matched random draws per recipe (0 = --draws; at most --draws, the paper's "
        "recipe being read from the main comparison)",
        0,
        minimum=0,
    )
    pairs_per_wording: int = opt(
        "selection",
        "pooled_wordings: training questions paired with each of the 12 wordings (0 = all)",
        16,
        minimum=0,
    )
    # [train]
    steps: int = opt("train", "optimizer steps per tuned model", 24, minimum=1)
    lr: float = opt("train", "peak learning rate", 1e-4, minimum=0)
    batch_size: int = opt("train", "dialogues per step", 8, minimum=1)
    warmup_steps: int = opt("train", "linear warmup steps", 3, minimum=0)
    # [eval]
    max_new_tokens: int = opt("eval", "greedy tokens of the reply to the challenge", 32, minimum=1)
    answer_tokens: int = opt("eval", "greedy tokens of the first and final answers", 16, minimum=1)
    eval_batch_size: int = opt("eval", "prompts per generation batch", 64, minimum=1)

    def __post_init__(self) -> None:
        self.check_fields()
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(
                f"eval_fraction (--eval-fraction) must be in (0, 1), got {self.eval_fraction}"
            )
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise ConfigError(
                f"protocols must be among {', '.join(PROTOCOLS)}; got {self.protocols}"
            )
        if not self.ks or min(self.ks) < 1 or len(set(self.ks)) != len(self.ks):
            raise ConfigError(f"ks (--ks) must be distinct numbers >= 1; got {self.ks}")
        if not self.splits or len(set(self.splits)) != len(self.splits) or min(self.splits) < 0:
            raise ConfigError(f"splits (--splits) must be distinct seeds >= 0; got {self.splits}")
        if self.splits[0] != self.seed:
            raise ConfigError(
                f"the first split ({self.splits[0]}) must be the main split's seed ({self.seed}):"
                " its sweep points reuse the main comparison"
            )
        if self.warmup_steps >= self.steps:
            raise ConfigError(
                f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})"
            )
        if set(self.stance_variants) - {"wrong", "user"}:
            raise ConfigError(
                f"stance_variants (--stance-variants) must be among wrong, user; "
                f"got {self.stance_variants}"
            )
        if self.main_eval_limit and self.sweep_eval_limit > self.main_eval_limit:
            raise ConfigError(
                f"sweep_eval_limit ({self.sweep_eval_limit}) must not exceed main_eval_limit "
                f"({self.main_eval_limit}): the sweep's questions are a prefix of the main ones"
            )
        if self.selection_draws > self.draws:
            raise ConfigError(
                f"selection_draws ({self.selection_draws}) must not exceed draws ({self.draws}): "
                "the paper's recipe is read from the main comparison, which has draws of each "
                "control; raise --draws too"
            )
        self.selection_specs()  # refuses unknown recipes and metrics before anything runs

    def selection_specs(self) -> list[tuple[str, str, str]]:
        """``(name, recipe, rank_metric)`` of each ``selection_recipes`` entry, ``name`` its
        output folder (``path:flip`` -> ``path-flip``; the paper's metric is not spelled out:
        ``pooled_wordings:apology_logit_diff`` -> ``pooled_wordings``); a recipe that reads no
        metric keeps the paper's (unused).

        Raises:
            ConfigError: an unknown recipe or metric, a metric given to a recipe that reads none,
                the main comparison's own recipe, or a repeated entry.
        """
        if not self.selection_recipes:  # the registries load torch: not for a study without them
            return []
        from sycointerp.metrics import METRICS
        from sycointerp.spt.selection import SELECTION_RECIPES

        flag, specs = "selection_recipes (--selection-recipes)", []
        for entry in self.selection_recipes:
            recipe, _, metric = entry.partition(":")
            if recipe not in SELECTION_RECIPES or (metric and metric not in METRICS):
                raise ConfigError(
                    f"{flag} has {entry!r}: use recipe[:metric] with a recipe among "
                    f"{', '.join(SELECTION_RECIPES)} and a metric among {', '.join(METRICS)}"
                )
            if metric and not SELECTION_RECIPES[recipe].uses_metric:
                raise ConfigError(f"{flag} has {entry!r}, but {recipe} reads no metric")
            metric = metric or PAPER_METRIC
            if (recipe, metric) == ("path", PAPER_METRIC):
                raise ConfigError(
                    f"{flag} has {entry!r}: that is the main comparison's recipe, compared "
                    "already; name the others"
                )
            name = recipe if metric == PAPER_METRIC else f"{recipe}-{metric}"
            specs.append((name, recipe, metric))
        if len({s[0] for s in specs}) != len(specs):
            raise ConfigError(f"{flag} repeats an entry: {self.selection_recipes}")
        return specs

    def check_files(self) -> None:
        """Every file the study reads exists.

        Raises:
            ConfigError: naming the option and the missing path.
        """
        for name in ("arc_path", "kl_text"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(
                    f"{name} (--{name.replace('_', '-')}) {path} does not exist or is not a file"
                )
