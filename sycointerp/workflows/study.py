"""The trust study: is the head ranking stable, and does tuning the ranked heads beat tuning
matched random heads?

Stages, in order, each resumable (a stage whose output exists is read back, not rerun; the SPT
runs inside resume per method):

1. ``protocols/``: the base model's multi-turn evaluation under each protocol variant
   (:data:`~sycointerp.workflows.study_config.PROTOCOLS`: final answer prefilled with the answer
   stem or generated freely; challenge paraphrases), on held-out questions of the main split; the
   variant with the lowest Truthfulness (furthest from its ceiling) is the study's protocol;
   optionally ARC-Easy multiple-choice items under the free protocol (reported, not chosen:
   training uses the built-in questions).
2. ``agreement/``: path patching of the training questions under every challenge paraphrase
   (apology logit difference) and under the other metrics (the paper's ratio; the answer flip at
   the answer stem); top-K overlap and Spearman correlation of every pair of rankings.
3. ``main/``: one SPT job (:mod:`sycointerp.workflows.spt`) on the main split: base, SPT on the top
   K, SFT, and uniform / layer-matched / W_O-norm-matched random heads, ``draws`` each, all
   paired on the same held-out items; re-patching after SPT; ranking stability in its
   ``ranking/heads.csv``.
4. ``sweep/split<s>/k<K>/``: SPT on the top K against layer-matched random heads for each K and
   split (the main split's point at the main K is read from ``main/``), evaluated on the first
   ``sweep_eval_limit`` held-out questions.
5. ``selection/<recipe>/`` (only with ``selection_recipes``): for each head-selection recipe
   (:mod:`sycointerp.spt.selection`) other than the paper's, SPT on its top K against random
   heads matched to its own layer histogram (``selection_draws``), on the main comparison's
   items; every recipe (the paper's read from ``main/``) is compared with its own layer-matched
   draws and the main comparison's uniform draws, pooled per item, and with the paper's recipe
   paired, beside the differences the comparison could detect (80% power, planned from the
   main comparison's own variances).
6. ``study.json``, ``study.md`` and ``figures/`` (rank intervals, agreement, the K sweep, the
   selection recipes).

Output directory::

    config.toml, inputs.json   the resolved configuration; SHA-256 of the model and input files
    protocols/  agreement/  main/  sweep/  selection/  figures/
    study.json  study.md       every number above with its interval, written last
"""

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sycointerp._io import read_json, write_json
from sycointerp.data.questions import Question
from sycointerp.evaluate.compare import compare_methods, compare_pooled
from sycointerp.evaluate.protocol import SycophancyEval
from sycointerp.provenance import input_files, model_identity
from sycointerp.workflows.output import INPUTS, check_inputs, output_lock, prepare_output
from sycointerp.workflows.report import write_report
from sycointerp.workflows.spt import reusing_kl_reference, split_data
from sycointerp.workflows.spt import run as run_spt
from sycointerp.workflows.spt_config import SPTConfig
from sycointerp.workflows.study_config import PROTOCOLS, StudyConfig

__all__ = ["run", "StudyResult", "OUTPUT_NAMES", "held_out_correct", "restrict", "sweep_points"]

log = logging.getLogger("sycointerp.study")
OUTPUT_NAMES = (
    INPUTS,
    "config.toml",
    "timings.json",
    "protocols",
    "agreement",
    "main",
    "sweep",
    "selection",
    "figures",
    "study.json",
    "study.md",
)


def _spt_config(config: StudyConfig, **changes: Any) -> SPTConfig:
    """The SPT job's configuration for a stage: the study's model, data, training and eval."""
    base = dict(
        model=config.model,
        eval_fraction=config.eval_fraction,
        limit=config.limit,
        seed=config.seed,
        steps=config.steps,
        lr=config.lr,
        batch_size=config.batch_size,
        warmup_steps=config.warmup_steps,
        max_new_tokens=config.max_new_tokens,
        answer_tokens=config.answer_tokens,
        eval_batch_size=config.eval_batch_size,
        kl_text=config.kl_text,
        kl_passages=config.kl_passages,
    )
    return SPTConfig(**{**base, **changes})


def _held_out(config: StudyConfig, seed: int) -> tuple[list[Question], list[Question]]:
    """The SPT job's own split of the built-in questions (so every stage uses the same items)."""
    return split_data(_spt_config(config, seed=seed))


# --------------------------------------------------------------------------- 1. protocols


def _evaluate(model, questions, config: StudyConfig, final_stem: bool, challenge: str, path):
    from sycointerp.evaluate import evaluate_sycophancy

    if (path / "sycophancy_eval.json").is_file():
        return SycophancyEval.load(path)
    result = evaluate_sycophancy(
        model,
        questions,
        challenge=challenge,
        final_stem=final_stem,
        batch_size=config.eval_batch_size,
        max_new_tokens=config.max_new_tokens,
        answer_tokens=config.answer_tokens,
    )
    result.save(path)
    return result


def flip_rate(result: SycophancyEval) -> dict[str, Any]:
    """Among initially-correct items, the share whose final answer is no longer correct."""
    from sycointerp.stats import proportion

    held = [it for it in result.items if it.correct_before]
    return proportion(sum(not it.correct_after for it in held), len(held)).to_json()


def _protocol_row(name: str, result: SycophancyEval, stem: SycophancyEval | None) -> dict:
    row = {"protocol": name, "n": result.n, "flip_rate": flip_rate(result)}
    row.update({k: v.to_json() for k, v in result.summary().items()})
    if stem is not None and result is not stem:
        (cmp,) = compare_methods({name: result, "stem": stem}, name)
        row["vs_stem"] = cmp.to_json()
    return row


def held_out_correct(model, config: StudyConfig) -> dict[str, Any]:
    """How many of the main split's held-out questions the base model answers correctly before
    any challenge (the first turn alone): the pool the comparisons' rates can be drawn from."""
    from sycointerp.evaluate import initially_correct
    from sycointerp.stats import proportion

    questions = _held_out(config, config.seed)[1]
    log.info("first answers on all %d held-out questions", len(questions))
    correct = initially_correct(
        model, questions, batch_size=config.eval_batch_size, answer_tokens=config.answer_tokens
    )
    return {"n": len(questions), "correct": proportion(sum(correct), len(correct)).to_json()}


def run_protocols(config: StudyConfig, target: Path) -> dict[str, Any]:
    """Stage 1 (module docstring): every protocol on the base model; the chosen one."""
    if (target / "protocols.json").is_file():
        return read_json(target / "protocols.json", "protocol search")
    from sycointerp.data.loaders import load_arc_jsonl
    from sycointerp.models import load_model

    model = load_model(config.model or None)
    questions = _held_out(config, config.seed)[1]
    questions = questions[: config.protocol_limit] if config.protocol_limit else questions
    results = {}
    for name in config.protocols:
        final_stem, challenge = PROTOCOLS[name]
        log.info("protocol %s on %d questions", name, len(questions))
        results[name] = _evaluate(model, questions, config, final_stem, challenge, target / name)
    rows = [_protocol_row(n, r, results.get("stem")) for n, r in results.items()]
    if config.arc_path:
        arc = load_arc_jsonl(config.arc_path)
        arc = arc[: config.arc_limit] if config.arc_limit else arc
        free = _evaluate(model, arc, config, False, "dont_think", target / "arc_free")
        rows.append(_protocol_row("arc_free", free, None))
    usable = [r for r in rows if r["protocol"] in PROTOCOLS and r["truthfulness"]["n"]]
    if usable:
        chosen = min(usable, key=lambda r: r["truthfulness"]["rate"])["protocol"]
        why = "lowest Truthfulness (furthest from its ceiling)"
    else:  # nothing answered correctly at first: no Truthfulness to compare
        chosen, why = "free", "no initially-correct item under any protocol: the paper's protocol"
    record = {"rows": rows, "chosen": chosen, "why": why, "n_questions": len(questions)}
    record["held_out"] = held_out_correct(model, config)
    write_json(target / "protocols.json", record)
    return record


# --------------------------------------------------------------------------- 2. agreement


def agreement_matrices(
    rankings: dict[str, list[tuple[int, ...]]], k: int
) -> dict[str, list[list[float]]]:
    """Top-``k`` overlap and Spearman correlation of the rank positions, every pair of rankings."""
    from sycointerp.stability import ranking_agreement

    names = list(rankings)
    pairs = [[ranking_agreement(rankings[a], rankings[b], k) for b in names] for a in names]
    return {
        "overlap": [[o for o, _ in row] for row in pairs],
        "spearman": [[r for _, r in row] for row in pairs],
    }


def _off_diagonal(matrix: list[list[float]], members: list[int]) -> dict[str, float]:
    values = [matrix[i][j] for i in members for j in members if i < j]
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def run_agreement(config: StudyConfig, target: Path) -> dict[str, Any]:
    """Stage 2 (module docstring): rankings under every paraphrase and metric, compared."""
    if (target / "agreement.json").is_file():
        return read_json(target / "agreement.json", "ranking agreement")
    from sycointerp.data.pairs import build_pairs
    from sycointerp.data.templates import CHALLENGES
    from sycointerp.metrics import METRICS
    from sycointerp.models import load_model
    from sycointerp.patching.path import path_ranking

    model = load_model(config.model or None)
    tok = model.tokenizer
    questions = _held_out(config, config.seed)[0][: config.agreement_pairs]

    def ranked(name: str, metric: str, challenge: str = "dont_think") -> list[tuple[int, ...]]:
        entry = METRICS[metric]
        pairs = build_pairs(questions, tok, challenge=challenge, position=entry.position)
        if not (target / name / "result.json").is_file():
            log.info("agreement: ranking %s on %d pairs", name, len(pairs))
        return path_ranking(model, pairs, entry.build(tok, pairs), target / name).rank()

    rankings = {}
    for name in CHALLENGES:
        rankings[f"challenge:{name}"] = ranked(f"challenge-{name}", "apology_logit_diff", name)
    # The paper's metric against the others at its own wording: the ratio, the answer flip.
    rankings["metric:apology_ratio"] = ranked("metric-apology", "apology")
    rankings["metric:flip"] = ranked("metric-flip", "flip")
    names = list(rankings)
    matrices = agreement_matrices(rankings, config.agreement_k)
    paraphrases = [i for i, n in enumerate(names) if n.startswith("challenge:")]
    paper = names.index("challenge:dont_think")
    record = {
        "names": names,
        "k": config.agreement_k,
        "n_pairs": len(questions),
        **matrices,
        "paraphrases": {key: _off_diagonal(matrices[key], paraphrases) for key in matrices},
        "metrics_vs_paper": {
            n: {key: matrices[key][paper][i] for key in matrices}
            for i, n in enumerate(names)
            if n.startswith("metric:")
        },
        "top": {n: [list(c) for c in r[: config.agreement_k]] for n, r in rankings.items()},
    }
    write_json(target / "agreement.json", record)
    return record


# --------------------------------------------------------------------------- 3. + 4. SPT runs


def _protocol_changes(choice: str) -> dict[str, Any]:
    final_stem, challenge = PROTOCOLS[choice]
    return {"final_stem": final_stem, "challenge": challenge}


def run_main_comparison(config: StudyConfig, target: Path, choice: str, progress: bool) -> dict:
    """Stage 3 (module docstring): the SPT job with every control."""
    spt = _spt_config(
        config,
        methods=["base", "spt", "sft", "random", "random_layer", "random_norm"],
        draws=config.draws,
        top_k=config.top_k,
        eval_limit=config.main_eval_limit,
        pressure_rounds=config.pressure_rounds,
        stance_variants=config.stance_variants,
        control_stances=False,  # 15 control runs at five times the protocol's cost: over budget
        **_protocol_changes(choice),
    )
    return run_spt(spt, target, progress=progress).report


def _reuses_main(config: StudyConfig, split: int, k: int) -> bool:
    return split == config.seed and k == config.top_k and config.sweep_draws <= config.draws


def run_sweep(config: StudyConfig, out: Path, choice: str, progress: bool) -> None:
    """Stage 4 (module docstring): top K against layer-matched random heads, per K and split."""
    for split in config.splits:
        ranking = (
            out / "main" / "ranking" if split == config.seed else out / "sweep" / f"split{split}"
        )
        for i, k in enumerate(config.ks):
            if _reuses_main(config, split, k):
                continue
            first = split != config.seed and i == 0
            methods = (["base"] if first else []) + ["spt", "random_layer"]
            changes: dict[str, Any] = dict(
                seed=split,
                methods=methods,
                draws=config.sweep_draws,
                top_k=k,
                eval_limit=config.sweep_eval_limit,
                repatch=False,
                pressure_rounds=1,  # the sweep reads Confidence and Truthfulness only
                stance_variants=[],
                **_protocol_changes(choice),
            )
            target = out / "sweep" / f"split{split}" / f"k{k}"
            if first:  # this run ranks the split's training questions; the others read it
                run_spt(_spt_config(config, **changes), target, progress=progress)
                ranking = target / "ranking"
            else:
                changes["heads_file"] = str(ranking / "heads.csv")
                run_spt(_spt_config(config, **changes), target, progress=progress)


def restrict(result: SycophancyEval, n: int) -> SycophancyEval:
    """The first ``n`` items (the sweep's questions are a prefix of the main ones)."""
    return SycophancyEval(result.model, result.challenge, result.judge, result.items[:n])


def _draw_names(method: str, draws: int) -> list[str]:
    return [f"{method}-{d}" for d in range(draws)] if draws > 1 else [method]


def sweep_points(config: StudyConfig, out: Path) -> list[dict[str, Any]]:
    """One row per (split, K): SPT's and the draws' Confidence / Truthfulness on the sweep's
    questions, and SPT against the draws pooled per item."""
    rows = []
    for split in config.splits:
        for k in config.ks:
            main = _reuses_main(config, split, k)
            where = out / "main" if main else out / "sweep" / f"split{split}" / f"k{k}"
            draws = _draw_names("random_layer", config.draws if main else config.sweep_draws)
            draws = draws[: config.sweep_draws]
            names = ["spt", *draws]
            evals = {
                n: restrict(SycophancyEval.load(where / n), config.sweep_eval_limit) for n in names
            }
            (pooled,) = compare_pooled(evals, "spt", {"random_layer": draws})
            report = read_json(where / "report.json", "SPT report")
            measured = {r["method"]: r for r in report["rows"] if "kl" in r}  # null: not finite
            row: dict[str, Any] = {"split": split, "k": k, "from": str(where.relative_to(out))}
            for metric in ("confidence", "truthfulness"):
                row[metric] = {"spt": evals["spt"].summary()[metric].to_json()}
                row[metric]["draws"] = [evals[d].summary()[metric].to_json()["rate"] for d in draws]
                row[metric]["pooled"] = getattr(pooled, metric).to_json()
            if "spt" in measured:  # no KL text: no "kl" key, rather than a placeholder
                row["kl"] = {
                    "spt": measured["spt"]["kl"],
                    "spt_ci": measured["spt"].get("kl_ci"),
                    "draws": [measured[d]["kl"] for d in draws],
                }
            row["n_items"] = evals["spt"].n
            rows.append(row)
    for split in config.splits:
        base_dir = (
            out / "main"
            if split == config.seed
            else (out / "sweep" / f"split{split}" / f"k{config.ks[0]}")
        )
        base = restrict(SycophancyEval.load(base_dir / "base"), config.sweep_eval_limit)
        for row in rows:
            if row["split"] == split:
                row["base"] = {
                    m: base.summary()[m].to_json() for m in ("confidence", "truthfulness")
                }
    return rows


# --------------------------------------------------------------------------- 5. selection


def run_selection(config: StudyConfig, out: Path, choice: str, progress: bool) -> None:
    """Stage 5 (module docstring): one SPT job per selection recipe, SPT on its top K against
    random heads matched to its own layer histogram, on the main comparison's items."""
    draws = config.selection_draws or config.draws
    for name, recipe, metric in config.selection_specs():
        changes: dict[str, Any] = dict(
            methods=["spt", "random_layer"],
            draws=draws,
            top_k=config.top_k,
            eval_limit=config.main_eval_limit,
            selection=recipe,
            rank_metric=metric,
            pairs_per_wording=config.pairs_per_wording,
            repatch=False,
            pressure_rounds=1,  # round 1 gives the correction rate and discrimination too
            stance_variants=[],
            **_protocol_changes(choice),
        )
        run_spt(_spt_config(config, **changes), out / "selection" / name, progress=progress)


def _evals(where: Path, names: list[str], prefix: str = "") -> dict[str, SycophancyEval]:
    return {prefix + n: SycophancyEval.load(where / n) for n in names}


def _same_questions(evals: dict[str, SycophancyEval]) -> None:
    """Runs compared item by item across SPT jobs must hold the same questions.

    Raises:
        OutputError: a run evaluated other questions (another split or limit), naming it.
    """
    from sycointerp.workflows.output import OutputError

    names = list(evals)
    first = {it.question_id for it in evals[names[0]].items}
    for name in names[1:]:
        if {it.question_id for it in evals[name].items} != first:
            raise OutputError(
                f"{name} was evaluated on other questions than {names[0]}: the selection "
                "comparison pairs items across jobs of one split and limit; rerun the study "
                "into a new --out"
            )


def selection_power(config: StudyConfig, out: Path) -> dict[str, Any]:
    """The smallest differences the selection comparison can detect (80% power, alpha 0.05), per
    measure, from the main comparison's SPT against its layer-matched draws pooled per item,
    planned for the selection stage's draws; and the items and held-out questions a 10-point
    difference would need (questions: items over the observed share of questions kept).

    Raises:
        BundleError: a main-comparison evaluation is missing or damaged.
    """
    from sycointerp.evaluate.compare import pooled_outcomes
    from sycointerp.stats import SMALL_SAMPLE, pooled_detectable_difference

    observed = _draw_names("random_layer", config.draws)
    evals = _evals(out / "main", ["spt", *observed])
    questions = evals["spt"].n  # held-out questions evaluated (every item, right or wrong first)
    planned = config.selection_draws or config.draws
    power: dict[str, Any] = {}
    for metric, (x, ys) in pooled_outcomes(evals, "spt", observed).items():
        found: dict[str, Any] = {
            "items": len(x),
            "questions": questions,
            "observed_draws": len(observed),
        }
        if len(x) < 2 or len(observed) < 2:
            found["reason"] = "fewer than 2 items or 2 draws to estimate the variances"
        else:
            dd = pooled_detectable_difference(torch.tensor(x), torch.tensor(ys), draws=planned)
            items = dd.items_for(0.10)
            found.update(dd.to_json(), items_for_10_points=items, small=len(x) < SMALL_SAMPLE)
            found["questions_for_10_points"] = math.ceil(items * questions / len(x))
        power[metric] = found
    return power


def _versus(a: SycophancyEval, b: SycophancyEval, name_a: str, name_b: str) -> dict[str, Any]:
    """``a`` against ``b`` paired (McNemar), each measure with the difference it could detect
    from its own observed disagreement."""
    from sycointerp.stats import detectable_difference

    (cmp,) = compare_methods({name_a: a, name_b: b}, name_a)
    record = cmp.to_json()
    for measure in ("confidence", "truthfulness"):
        paired = getattr(cmp, measure)
        if paired.n:
            found = detectable_difference((paired.b + paired.c) / paired.n, paired.n)
            record[measure]["detectable"] = found.difference
    return record


def _recipe_row(
    name: str,
    where: Path,
    layer_draws: list[str],
    uniform: dict[str, SycophancyEval],
    paper: SycophancyEval | None,
) -> dict[str, Any]:
    """One recipe's SPT against its layer-matched draws and the shared uniform ones (pooled per
    item), and against the paper's recipe's SPT (paired).

    Raises:
        BundleError: a run's evaluation, report or head set is missing or damaged.
        OutputError: a run evaluated other questions than the recipe's SPT.
    """
    evals = {**_evals(where, ["spt", *layer_draws]), **uniform}
    _same_questions({**evals, **({"paper": paper} if paper is not None else {})})
    layer, shared = compare_pooled(
        evals, "spt", {"random_layer": layer_draws, "random": list(uniform)}
    )
    report = {r["method"]: r for r in read_json(where / "report.json", "SPT report")["rows"]}
    heads = read_json(where / "heads.json", "tuned head set")
    row: dict[str, Any] = {"name": name, "from": where.name, "heads": heads["heads"]}
    row.update(source=heads["source"], draws=len(layer_draws))
    summary = evals["spt"].summary()
    for metric in ("confidence", "truthfulness"):
        row[metric] = summary[metric].to_json()
    for key in ("correction_rate", "discrimination"):
        row[key] = report["spt"].get(key)
    row["vs_layer_matched"], row["vs_uniform"] = layer.to_json(), shared.to_json()
    if paper is not None:
        row["vs_paper"] = _versus(evals["spt"], paper, "spt", "paper")
    return row


def selection_rows(config: StudyConfig, out: Path) -> dict[str, Any]:
    """``study.json``'s ``selection``: the power, one row per recipe (the paper's first, read
    from the main comparison) and every pair of recipes compared paired.

    Raises:
        BundleError: a run's output is missing or damaged.
        OutputError: runs evaluated on other questions.
    """
    draws = config.selection_draws or config.draws
    uniform = _evals(out / "main", _draw_names("random", config.draws), "uniform:")
    main_draws = _draw_names("random_layer", config.draws)[:draws]
    rows = [_recipe_row("paper", out / "main", main_draws, uniform, None)]
    spts = {"paper": SycophancyEval.load(out / "main" / "spt")}
    for name, _, _ in config.selection_specs():
        where = out / "selection" / name
        rows.append(
            _recipe_row(name, where, _draw_names("random_layer", draws), uniform, spts["paper"])
        )
        spts[name] = SycophancyEval.load(where / "spt")
    top = {tuple(h) for h in rows[0]["heads"]}
    for row in rows:
        row["overlap_with_paper"] = len(top & {tuple(h) for h in row["heads"]}) / len(top)
    names = list(spts)
    pairwise = [
        _versus(spts[a], spts[b], a, b) for i, a in enumerate(names) for b in names[i + 1 :]
    ]
    return {
        "power": selection_power(config, out),
        "draws": draws,
        "recipes": rows,
        "pairwise": pairwise,
    }


# --------------------------------------------------------------------------- the study


def _check_model_shape(config: StudyConfig) -> None:
    """Every K of the study against the model's heads, read without its weights (before any
    stage runs).

    Raises:
        ConfigError: a K (``top_k``, ``ks``, ``agreement_k``) above the model's heads.
    """
    from sycointerp._config import ConfigError
    from sycointerp.provenance import model_dims

    dims = model_dims(config.model or None)
    if dims is None:
        return
    heads, name = dims[0] * dims[1], config.model or "the embedded SmolLM2-135M-Instruct"
    for option, k in (("top_k", config.top_k), ("agreement_k", config.agreement_k)):
        if k > heads:
            raise ConfigError(
                f"{option}={k} but {name} has {heads} heads; lower --{option.replace('_', '-')}"
            )
    if max(config.ks) > heads:
        raise ConfigError(
            f"ks goes up to {max(config.ks)} but {name} has {heads} heads; lower --ks"
        )


class _StageClock:
    """Wall-clock seconds per stage, summed over every invocation (a resumed stage adds only the
    time it ran again; a stage read back adds ~0), kept in ``timings.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = read_json(path, "stage timings") if path.is_file() else {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:  # an interrupted stage's time counts too: the rerun only adds what is left
            elapsed = time.perf_counter() - start
            self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed
            write_json(self.path, self.seconds)
            log.info(
                "stage %s: %.0f s this run, %.0f s in all", stage, elapsed, self.seconds[stage]
            )


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run` leaves: the directory and its ``study.json`` record.

    Attributes:
        out: the study's output directory (layout in the module docstring).
        record: ``study.json``: ``protocols``, ``agreement``, ``main``, ``sweep``,
            ``stability`` and the stages' ``seconds``.
    """

    out: Path
    record: dict[str, Any]

    @property
    def markdown(self) -> str:
        """``study.md``, every table of the study with its intervals."""
        return (self.out / "study.md").read_text(encoding="utf-8")


def run(
    config: StudyConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True
) -> StudyResult:
    """Run (or resume) every stage of the module docstring into ``out``: the same files as
    ``sycointerp study`` with these options.

    Args:
        config: the study's resolved configuration.
        out: the output directory; finished stages there are read back, not rerun.
        overwrite: replace a study of another configuration in ``out``.
        progress: tqdm bars (notebook widgets in Jupyter).

    Raises:
        OutputError, ConfigError, DataError, ModelLoadError: user errors (the CLI exits 2).
        TrainingError: a non-finite loss in one of the SPT runs.
    """
    from sycointerp.workflows.study_tables import write_study_md

    config.check_files()
    _check_model_shape(config)
    _held_out(config, config.seed)  # read-only data checks before anything is written
    out = Path(out)
    with output_lock(out):
        status = prepare_output(
            out,
            config,
            overwrite,
            names=OUTPUT_NAMES,
            done="study.json",
            header="sycointerp trust study: the fully resolved configuration (rerun with "
            "--config this-file)",
        )
        files = input_files([f for f in (config.arc_path, config.kl_text) if f])
        check_inputs(out, {"model": model_identity(config.model or None), "files": files}, status)
        clock = _StageClock(out / "timings.json")
        with clock("protocols"):
            protocols = run_protocols(config, out / "protocols")
        choice = protocols["chosen"]
        log.info("protocol chosen: %s", choice)
        with clock("agreement"):
            agreement = run_agreement(config, out / "agreement")
        with reusing_kl_reference():  # the main stage's base logits serve every sweep run
            with clock("main"):
                main = run_main_comparison(config, out / "main", choice, progress)
            with clock("sweep"):
                run_sweep(config, out, choice, progress)
            if config.selection_recipes:
                with clock("selection"):
                    run_selection(config, out, choice, progress)
        record = {
            "seconds": clock.seconds,
            "protocols": protocols,
            "agreement": agreement,
            "main": {k: main[k] for k in ("heads", "rows", "paired", "pooled") if k in main},
            "sweep": sweep_points(config, out),
        }
        if config.selection_recipes:
            record["selection"] = selection_rows(config, out)
        record["stability"] = write_study_md(config, out, record)
        write_json(out / "study.json", record)
        write_report(out)
        return StudyResult(out, record)
