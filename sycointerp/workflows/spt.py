"""One SPT experiment: split the questions, choose the heads, tune every method on the same data,
evaluate.

Methods (all trained by :func:`sycointerp.spt.train.train` on the same dialogues and schedule):
``base`` (untuned), ``spt`` (the selected heads' slices), three random-head controls with as many
heads (``random``: drawn uniformly, the paper's control; ``random_layer``: the selected set's
layer histogram; ``random_norm``: each selected head's W_O Frobenius norm matched within 10%),
each drawn ``draws`` times (``random_layer-0``, ...; draw d uses seed ``seed + d``),
``lora_heads`` (rank-r deltas on the selected heads' slices), ``lora`` (peft LoRA on every
attention projection), ``sft`` (every weight).

Output directory::

    config.toml       the resolved configuration
    inputs.json       SHA-256 of the model's and the input files (resume on others: refused)
    heads.json        the tuned head set (and how it was chosen)
    ranking/          the selection recipe's ranking on the training questions (values; by default
                      path patching), when no heads_file is given; reused by a rerun of the same
                      recipe and metric (another is refused)
    spt/repatch/      (repatch, heads ranked by this run with the path recipe) path patching of the
                      tuned model on the ranking's pairs; spt/figures/repatch.{html,png}: base /
                      after / difference
    <method>/         result.json (metrics + training report), sycophancy_eval.json (every
                      dialogue of the paper's protocol), stance-model/, stance-wrong/,
                      stance-user/ (stance_eval.json: both stances, every round),
                      deltas.safetensors (head methods), model/ (full HF checkpoint, with
                      save_model)
    report.json       every method's row, written last
    figures/          stances.{html,png}: the survival curves under sustained pressure (with the
                      report page)
    results.md        the comparison table, then SPT against every other method paired by item
                      (differences with paired bootstrap intervals and exact McNemar p-values),
                      then, with draws > 1, against each control's draws pooled per item

Each row carries the stance measures of :mod:`sycointerp.evaluate.stance` at its top level
(:data:`STANCE_COLUMNS`: ``correction_rate``, ``discrimination``, ``turn_of_flip``,
``number_of_flip``, each with its interval, from the model's own answers over
``pressure_rounds`` rounds) and every variant's summary under ``stances``.

Resumable: a method whose ``result.json`` exists is not run again; training checkpoints (with
``checkpoint_every``) resume an interrupted method. Under ``torchrun`` / ``accelerate launch``
training is data-parallel; evaluation runs on the main process.
"""

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from sycointerp._config import ConfigError
from sycointerp._io import (
    BundleError,
    atomic_write,
    fsync_tree,
    read_json,
    write_json,
    write_tensors,
)
from sycointerp.data.questions import DataError, Question, load_questions_jsonl
from sycointerp.errors import UserError
from sycointerp.evaluate.capability import TextKL, kl_text
from sycointerp.evaluate.compare import (
    MethodComparison,
    PooledComparison,
    StanceComparison,
    compare_methods,
    compare_pooled,
    compare_stances,
    comparison_table,
    pooled_table,
    stance_comparison_table,
)
from sycointerp.evaluate.protocol import SycophancyEval
from sycointerp.evaluate.stance import StanceEval, evaluate_stances
from sycointerp.heads import Head, HeadGrid, HeadSet, read_heads_csv
from sycointerp.models import DTYPES, EMBEDDED_MODEL_NAME, hook_model, load_hf_model
from sycointerp.patching.path import path_ranking
from sycointerp.provenance import input_files, model_dims, model_identity
from sycointerp.spt.data import build_dialogues, check_disjoint, split_questions, tokenize_dialogues
from sycointerp.spt.train import TrainConfig, train
from sycointerp.spt.tunable import HeadDeltas
from sycointerp.stats import summarize
from sycointerp.workflows.inputs import load_job_questions
from sycointerp.workflows.output import (
    INPUTS,
    OutputError,
    check_inputs,
    output_lock,
    prepare_output,
    save_figure_files,
)
from sycointerp.workflows.report import STANCE_TABLE_START, write_report
from sycointerp.workflows.spt_config import MethodRun, SPTConfig

__all__ = [
    "SPTResult",
    "run",
    "split_data",
    "choose_heads",
    "ranking_pairs",
    "OUTPUT_NAMES",
    "output_names",
    "results_table",
]

log = logging.getLogger("sycointerp.spt")
OUTPUT_NAMES = (
    INPUTS,
    "config.toml",
    "heads.json",
    "ranking",
    "report.json",
    "results.md",
    "figures",
)


def output_names(config: SPTConfig) -> tuple[str, ...]:
    """What a run of ``config`` may write in its output directory (``overwrite`` clears these)."""
    from sycointerp.spt.methods import SPT_METHODS

    return (*OUTPUT_NAMES, *SPT_METHODS.names(), *(run.name for run in config.runs()))


def split_data(config: SPTConfig) -> tuple[list[Question], list[Question]]:
    """``(train, eval)`` questions: the dataset split (or the dataset and ``eval_path``), disjoint.

    Raises:
        DataError: missing files, too few questions, or training questions found in ``eval_path``.
    """
    questions = load_job_questions(config)
    if config.eval_path:
        if not Path(config.eval_path).is_file():
            raise DataError(f"eval_path {config.eval_path} does not exist; check --eval-path")
        train_qs, eval_qs = questions, load_questions_jsonl(config.eval_path)
        check_disjoint(train_qs, eval_qs, by_id=False)  # ids of two files may coincide by chance
    else:
        train_qs, eval_qs = split_questions(
            questions, eval_fraction=config.eval_fraction, seed=config.seed
        )
        check_disjoint(train_qs, eval_qs)
    return train_qs, eval_qs[: config.eval_limit] if config.eval_limit else eval_qs


def choose_heads(
    config: SPTConfig,
    train_qs: list[Question],
    ranking_dir: Path | None = None,
    progress: bool = False,
) -> HeadSet:
    """The heads to tune: the top K of ``heads_file``, else of the ranking of the registered
    selection recipe ``config.selection`` on the training questions
    (:mod:`sycointerp.spt.selection`; by default path patching on the paper's wording).

    The ranking is saved to (and, on a rerun, read back from) ``ranking_dir``; ``progress``
    shows the path-patching bar (patched cells, with the rate and the time left).

    Raises:
        HeadFileError: a heads file of another model's grid, of KV heads, or shorter than K.
        DataError: K larger than the model's heads.
        RankingMismatch: ``ranking_dir`` holds a ranking of another recipe or metric.
    """
    from sycointerp.patching import PatchResult
    from sycointerp.spt.selection import SelectionInputs, check_ranking, select_heads, top_heads

    hf, tok, name = _load(config)
    grid = HeadGrid.from_config(hf.config, name)
    k = config.top_k or max(1, round(0.04 * grid.total()))
    if config.heads_file:
        return HeadSet.from_csv(config.heads_file, k, grid)
    if k > grid.total():
        raise DataError(f"top_k={k} but the model has {grid.total()} heads; lower --top-k")
    if ranking_dir is not None and (ranking_dir / "result.json").is_file():
        saved = PatchResult.load(ranking_dir)
        check_ranking(saved, config.selection, config.rank_metric, str(ranking_dir))
        return top_heads(config.selection, saved, k)
    inputs = SelectionInputs(
        hf, tok, lambda: hook_model(hf, tok, name), tuple(train_qs), config.__dict__, progress
    )
    log.info("ranking heads (%s) on %d training questions", config.selection, len(train_qs))
    start = time.perf_counter()
    heads, result = select_heads(config.selection, inputs, k)
    log.info("ranking: %d values in %.1f s", result.values.numel(), time.perf_counter() - start)
    if ranking_dir is not None:
        result.save(ranking_dir)
    return heads


def ranking_pairs(config: SPTConfig, train_qs: list[Question], model):
    """The pairs and the metric of the ``path`` recipe: the registered ``rank_metric``
    (:data:`sycointerp.metrics.METRICS`) on pairs of the training questions under the paper's
    wording, ending where the metric reads (the reply, or the answer stem)."""
    from sycointerp.data.templates import PAPER_CHALLENGE
    from sycointerp.spt.selection import metric_pairs

    return metric_pairs(model, train_qs, config.rank_metric, [PAPER_CHALLENGE], config.system)


def _load(config: SPTConfig):
    return load_hf_model(
        config.model or None,
        device=config.device,
        dtype=DTYPES[config.dtype],
        trust_remote_code=config.trust_remote_code,
    )


# Every head's W_O norm of the last model asked for (the norm-matched controls' draws).
_W_O_NORMS: dict[tuple, torch.Tensor] = {}


def _inputs(run: MethodRun, hf: torch.nn.Module, heads: HeadSet, config: SPTConfig):
    """What a trained method builds from; the W_O norms (norm-matched controls) are those of
    :func:`sycointerp.patching.controls.w_o_norms`, on the hooked model."""
    from sycointerp.patching.controls import w_o_norms
    from sycointerp.spt.methods import MethodInputs

    def norms() -> torch.Tensor:
        # A fresh copy on the CPU (hooking must not touch the model to be tuned, nor take a second
        # copy's memory on the GPU), read once per model and process: every draw reuses it.
        key = (config.model, config.dtype, config.trust_remote_code)
        if key not in _W_O_NORMS:
            fresh, tok, name = load_hf_model(
                config.model or None,
                device="cpu",
                dtype=DTYPES[config.dtype],
                trust_remote_code=config.trust_remote_code,
            )
            _W_O_NORMS.clear()
            _W_O_NORMS[key] = w_o_norms(hook_model(fresh, tok, name))
        return _W_O_NORMS[key]

    return MethodInputs(hf, heads, config.__dict__, run.draw, norms)


def _train_config(lr_option: str, config: SPTConfig) -> TrainConfig:
    return TrainConfig(
        steps=config.steps,
        lr=getattr(config, lr_option),
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        seed=config.seed,
        checkpoint_every=config.checkpoint_every,
    )


def _evaluate(
    model,
    kl_to_base: Callable[[torch.nn.Module], TextKL] | None,
    eval_qs: list[Question],
    config: SPTConfig,
    out: Path,
    progress: bool,
    steer=None,
    full_stances: bool = True,
) -> dict[str, Any]:
    """Every measure of one method (``full_stances``: every round and variant of the stance
    evaluation, else its first round alone); ``steer`` (positions -> context) steers the model
    throughout (at the last position while generating and scoring prompts, everywhere for the
    KL text);
    ``kl_to_base`` is :func:`_kl_to_base` (``None``: no KL); the row gets ``kl`` (nats per
    token) and ``kl_ci``, its 95% bootstrap interval over passages."""
    from contextlib import nullcontext

    steering, steer = steer is not None, steer or (lambda positions: nullcontext())
    with steer("last"):
        row = _measure(model, eval_qs, config, out, progress, steering, full_stances)
    if kl_to_base is not None:
        with steer("all"):
            kl = kl_to_base(model)
        row["kl"], row["kl_ci"] = kl.mean, list(kl.interval())
    return row


def _measure(
    model,
    eval_qs: list[Question],
    config: SPTConfig,
    out: Path,
    progress: bool,
    steering: bool,
    full_stances: bool,
) -> dict[str, Any]:
    """The multi-turn evaluation, ARC and opinion matching. Under steering the single-forward
    scores run one prompt at a time: right padding would move the last position the steering
    adds at (generation pads on the left, so it keeps its batches)."""
    from sycointerp.data.loaders import load_arc_jsonl
    from sycointerp.evaluate import letter_accuracy, opinion_matching

    row: dict[str, Any] = {}
    score_batch = 1 if steering else config.eval_batch_size
    stances = evaluate_stance_variants(model, eval_qs, config, progress, full_stances)
    syc = stances["model"].protocol(eval_qs)  # round 1: the paper's protocol, same dialogues
    syc.save(out)
    row.update({k: v.to_json() for k, v in syc.summary().items()})
    for name, stance in stances.items():
        stance.save(out / f"stance-{name}")
    summary = stances["model"].summary()
    row.update({k: _json_or_none(summary[k]) for k in STANCE_COLUMNS})
    row["stances"] = {name: stance.to_json() for name, stance in stances.items()}
    if config.arc_path:
        arc = load_arc_jsonl(config.arc_path)
        arc = arc[: config.arc_limit] if config.arc_limit else arc
        row["arc_accuracy"] = letter_accuracy(
            model, arc, system=config.system or None, batch_size=score_batch
        ).accuracy.to_json()
    if config.opinion_path:
        limit = config.opinion_limit or None
        row["opinion_matching"] = opinion_matching(
            model,
            config.opinion_path,
            limit=limit,
            system=config.system or None,
            batch_size=score_batch,
        ).rate.to_json()
    return row


# The stance measures every method's row carries at its top level (from the model's own answers).
STANCE_COLUMNS = ("correction_rate", "discrimination", "turn_of_flip", "number_of_flip")


def _json_or_none(value) -> dict[str, Any] | None:
    return None if value is None else value.to_json()


def evaluate_stance_variants(
    model, eval_qs: list[Question], config: SPTConfig, progress: bool, full: bool = True
) -> dict[str, StanceEval]:
    """The stance evaluation of one method: ``"model"`` (its own first answers,
    ``config.pressure_rounds`` rounds, whose first round is the paper's protocol) and each of
    ``config.stance_variants`` (one round: ``"wrong"`` prefilled wrong first answers, ``"user"``
    the user names an answer); ``full=False``: the first round of ``"model"`` alone (the
    protocol's cost; correction rate and discrimination included)."""
    common = dict(
        challenge=config.challenge,
        final_stem=config.final_stem,
        batch_size=config.eval_batch_size,
        max_new_tokens=config.max_new_tokens,
        answer_tokens=config.answer_tokens,
        system=config.system or None,
        progress=progress,
    )
    variants = {"model": dict(rounds=config.pressure_rounds if full else 1)}
    variants.update(
        {
            v: {"wrong": dict(first="wrong", rounds=1), "user": dict(user_answer=True, rounds=1)}[v]
            for v in (config.stance_variants if full else [])
        }
    )
    return {name: evaluate_stances(model, eval_qs, **kw, **common) for name, kw in variants.items()}


def _run_method(
    run: MethodRun,
    config: SPTConfig,
    heads: HeadSet,
    examples,
    eval_qs,
    base,
    out: Path,
    acc,
    progress: bool,
    train_qs: list[Question],
) -> dict[str, Any]:
    from sycointerp.spt.methods import SPT_METHODS

    method, target = SPT_METHODS[run.method], out / run.name
    if (target / "result.json").is_file():
        log.info("%s: already done (%s)", run.name, target / "result.json")
        return read_json(target / "result.json", f"{run.name} result")
    target.mkdir(parents=True, exist_ok=True)
    hf, tok, name = _load(config)
    row: dict[str, Any] = {
        "method": run.name,
        "kind": run.method,
        "draw": run.draw,
        "heads": len(heads) if method.counts_heads else 0,
    }
    if method.train is not None:
        tunable = method.train(_inputs(run, hf, heads, config))
        log.info("%s: %d trainable parameters", run.name, tunable.n_trainable())
        report = train(
            hf,
            tunable,
            examples,
            _train_config(method.lr_option, config),
            pad_id=tok.pad_token_id or 0,
            checkpoint_dir=target,
            accelerator=acc,
            progress=progress,
        )
        tunable.merge()
        row["train"] = report.to_json()
        if acc.is_main_process:
            if isinstance(tunable, HeadDeltas):
                write_tensors(target / "deltas.safetensors", tunable.named_deltas())
                write_json(target / "heads.json", tunable.heads.to_json())
            if (
                config.save_model
            ):  # written aside, then renamed: a crash never leaves half a checkpoint
                staging = target / "model.tmp"
                shutil.rmtree(staging, ignore_errors=True)
                hf.save_pretrained(staging)
                tok.save_pretrained(staging)
                fsync_tree(staging)
                shutil.rmtree(target / "model", ignore_errors=True)
                os.replace(staging, target / "model")
                fsync_tree(target)
    if acc.is_main_process:
        start = time.perf_counter()
        tuned = hook_model(hf, tok, name)
        steer = None
        if method.steer is not None:  # no training: steer the untouched model
            # only a method that ranks heads is compared with the path ranking
            ranking = out / "ranking"
            reference = _full_ranking(ranking, config, tuned) if method.wants_reference else None
            steer, row["steering"] = method.steer(
                tuned,
                train_qs,
                len(heads),
                config.__dict__,
                save_dir=target,
                reference=reference,
            )
        full = config.control_stances or not run.is_control
        row.update(_evaluate(tuned, base, eval_qs, config, target, progress, steer, full))
        row["eval_seconds"] = time.perf_counter() - start
        ranking = out / "ranking"
        if run.method == "spt" and _repatches(config) and (ranking / "result.json").is_file():
            row["repatch"] = _repatch(tuned, ranking, heads, train_qs, config, target)
        write_json(target / "result.json", row)
    acc.wait_for_everyone()
    return row


def _repatches(config: SPTConfig) -> bool:
    """Whether the tuned model is re-patched: asked, and the ranking is the paper's path
    patching (a recipe that can be re-measured on the same pairs)."""
    from sycointerp.spt.selection import SELECTION_RECIPES

    return config.repatch and SELECTION_RECIPES[config.selection].repatch


def _full_ranking(ranking: Path, config: SPTConfig, model) -> list[Head] | None:
    """The run's ranking of every query head (its own, by its selection recipe, or a heads file
    that lists them all), or ``None``."""
    from sycointerp.patching import PatchResult

    if (ranking / "result.json").is_file():
        return PatchResult.load(ranking).rank()
    if config.heads_file:
        listed = list(read_heads_csv(config.heads_file).heads)
        if len(listed) == HeadGrid.of(model).count("query"):
            return listed
    return None


def _repatch(
    tuned,
    ranking: Path,
    heads: HeadSet,
    train_qs: list[Question],
    config: SPTConfig,
    target: Path,
) -> dict[str, Any]:
    """The paper's re-patching: path patching of the tuned model on the ranking's training
    pairs; writes ``repatch/`` (the result), ``figures/repatch.{html,png}`` (before, after,
    difference) and returns each selected head's effect before and after, with a paired
    bootstrap interval of the change (same pairs, so the per-pair differences are resampled)."""
    from sycointerp.patching import PatchResult
    from sycointerp.plot import compare_heatmaps

    before = PatchResult.load(ranking)
    pairs, metric = ranking_pairs(config, train_qs, tuned)
    after = path_ranking(tuned, pairs, metric, target / "repatch", batch_size=64)
    figure = compare_heatmaps(before, after, titles=("base", "after SPT"), top_k=len(heads))
    save_figure_files(figure, target / "figures" / "repatch")
    rows = []
    for layer, head in heads.heads:
        change = summarize(after.values[layer, head] - before.values[layer, head])
        rows.append(
            {
                "layer": layer,
                "head": head,
                "before": float(before.mean[layer, head]),
                "after": float(after.mean[layer, head]),
                "change": change.to_json(),
            }
        )
    selected = torch.stack([after.values[l, h] - before.values[l, h] for l, h in heads.heads])
    return {
        "heads": rows,
        "mean_change": summarize(selected.mean(0)).to_json(),
        "n_pairs": len(pairs),
    }


def _fmt(p: dict[str, Any] | None, scale: float = 100) -> str:
    if not p:
        return "-"
    if p.get("rate") is None:
        return f"n/a (n={p.get('n', 0)})"
    return f"{p['rate'] * scale:.1f} [{p['ci_low'] * scale:.1f}, {p['ci_high'] * scale:.1f}]"


def results_table(rows: list[dict[str, Any]]) -> str:
    """The markdown comparison table (rates in %, 95% Wilson intervals)."""
    head = (
        "| method | heads | trainable params | train s | s/step | optimizer MB | Confidence | "
        "Truthfulness | apology rate | accuracy before | KL to base | ARC accuracy | "
        "opinion matching |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        t = r.get("train") or {}
        kl = kl_text(r.get("kl", "-"), r.get("kl_ci"))
        lines.append(
            f"| {r['method']} | {r['heads'] or '-'} | {t.get('n_trainable', 0):,} | "
            f"{t.get('seconds', 0):.0f} | {t.get('step_seconds', 0):.2f} | "
            f"{t.get('optimizer_bytes', 0) / 2**20:.1f} | {_fmt(r['confidence'])} | "
            f"{_fmt(r['truthfulness'])} | {_fmt(r['apology_rate'])} | {_fmt(r['accuracy_before'])} "
            f"| {kl} | {_fmt(r.get('arc_accuracy'))} | {_fmt(r.get('opinion_matching'))} |"
        )
    return "\n".join(lines)


def _rate_cell(value: dict[str, Any] | None) -> str:
    """A rate in %, its interval and ``(k/n)``."""
    return f"{_fmt(value)} ({value['k']}/{value['n']})" if value and value["n"] else _fmt(value)


def _cell(record: dict[str, Any] | None, key: str) -> str:
    """One stance measure of a summary record as table text (``-``: not run)."""
    value = (record or {}).get(key)
    if value is None:
        return "-" if record is None or key not in record else "n/a (no items)"
    if "rate" in value:
        return _rate_cell(value)
    if "diff" in value:
        if value["diff"] is None:
            return "n/a"
        return f"{value['diff']:+.2f} [{value['ci_low']:+.2f}, {value['ci_high']:+.2f}]"
    return f"{value['mean']:.2f} [{value['ci_low']:.2f}, {value['ci_high']:.2f}]"


def stance_table(rows: list[dict[str, Any]], config: SPTConfig) -> str:
    """The markdown table of both stances (rates in %, 95% Wilson intervals; discrimination with
    Newcombe's interval; Turn-/Number-of-Flip means with bootstrap intervals)."""
    n = config.pressure_rounds
    lines = [
        f"{STANCE_TABLE_START}, {n} rounds of push-back; the variants one "
        "round each). Discrimination = P(keeps | right first) - P(keeps | wrong first): 1 firm, "
        "0 stubborn or pushover.",
        "",
        "| method | keeps right | corrects own wrong | discrimination | Turn-of-Flip | "
        f"Number-of-Flip | still right after {n} | corrects prefilled wrong | accepts user's gold "
        "| rejects user's wrong |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        st = r.get("stances") or {}
        own = st.get("model")
        last = _rate_cell((own or {}).get("survival_right", [None])[-1])
        lines.append(
            f"| {r['method']} | {_cell(own, 'holds_right')} | {_cell(own, 'correction_rate')} | "
            f"{_cell(own, 'discrimination')} | {_cell(own, 'turn_of_flip')} | "
            f"{_cell(own, 'number_of_flip')} | {last} | "
            f"{_cell(st.get('wrong'), 'correction_rate')} | "
            f"{_cell(st.get('user'), 'correction_rate')} | {_cell(st.get('user'), 'holds_right')} |"
        )
    return "\n".join(lines)


def _shared_heads(acc, choose) -> HeadSet:
    """The main process chooses; every process trains the same heads (a near-tie ranked on another
    thread count must not split them)."""
    from accelerate.utils import broadcast_object_list

    box = [choose().to_json() if acc.is_main_process else None]
    if acc.num_processes > 1:
        broadcast_object_list(box)
    return HeadSet.from_json(box[0])


@dataclass(frozen=True)
class SPTResult:
    """What :func:`run` leaves: the directory and its ``report.json``.

    Attributes:
        out: the run's output directory (layout in the module docstring).
        report: ``report.json``'s record: ``rows`` (one per method run), ``paired`` and
            ``pooled`` comparisons, the tuned ``heads`` and the data sizes.
    """

    out: Path
    report: dict[str, Any]

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        """Each method run's row (``result.json``), by its name (``spt``, ``random_layer-1``)."""
        return {row["method"]: row for row in self.report["rows"]}

    @property
    def heads(self) -> HeadSet:
        """The tuned head set (``heads.json``), its ``source`` naming how it was chosen.

        Raises:
            BundleError: ``heads.json`` is missing, unreadable or not a head set.
        """
        record = read_json(self.out / "heads.json", "SPT run")
        try:
            return HeadSet.from_json(record)
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"{self.out / 'heads.json'} is not a head set ({err})") from None

    def evaluation(self, name: str) -> SycophancyEval:
        """The multi-turn evaluation of method run ``name``, every dialogue included.

        Raises:
            KeyError: no such run in this experiment.
            BundleError: its ``sycophancy_eval.json`` is missing or corrupt.
        """
        if name not in self.rows:
            raise KeyError(f"no method run {name!r}; this run has {', '.join(self.rows)}")
        return SycophancyEval.load(self.out / name)

    def stances(self, name: str) -> dict[str, StanceEval]:
        """The stance evaluations of method run ``name``: ``"model"`` (its own first answers,
        every round) and the variants run (``"wrong"``, ``"user"``).

        Raises:
            KeyError: no such run in this experiment.
            BundleError: a saved ``stance_eval.json`` is corrupt.
        """
        if name not in self.rows:
            raise KeyError(f"no method run {name!r}; this run has {', '.join(self.rows)}")
        return _stances_of(self.out / name)


def run(
    config: SPTConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True
) -> SPTResult:
    """Run (or resume) the experiment of the module docstring into ``out``: the same files as
    ``sycointerp spt`` with these options.

    Args:
        config: the run's resolved configuration.
        out: the output directory; a finished run there is read back, not rerun.
        overwrite: replace a run of another configuration in ``out``.
        progress: tqdm bars (notebook widgets in Jupyter).

    Raises:
        OutputError, ConfigError, DataError, ModelLoadError: user errors (the CLI exits 2).
        TrainingError: a non-finite loss.
    """
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    config.check_files()
    _check_heads_file(config)
    _check_model_shape(config)
    _check_kl_text(config)
    split = split_data(config)  # read-only checks first: a refused attempt leaves --out untouched
    # Evaluation runs on the main process while the others wait at a barrier: allow it hours,
    # not the default 30 minutes of a collective.
    acc = Accelerator(
        cpu=not config.device.startswith("cuda"),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=12))],
    )
    out = Path(out)
    with ExitStack() as held:
        refusal = None
        if acc.is_main_process:
            try:
                _prepare(config, out, overwrite, held)
            except UserError as err:  # every process must stop, not only the main one
                refusal = str(err)
        box = [refusal]
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(box)
        if box[0] is not None:
            raise OutputError(box[0])
        return SPTResult(out, _run_methods(config, out, acc, progress, split))


def _prepare(config: SPTConfig, out: Path, overwrite: bool, held: ExitStack) -> None:
    """On the main process: lock ``out`` (held until the run ends), prepare it, check inputs."""
    held.enter_context(output_lock(out))  # released when the run ends, or the process dies
    status = prepare_output(
        out,
        config,
        overwrite,
        names=output_names(config),
        done="report.json",
        header="sycointerp SPT run: the fully resolved configuration (rerun with --config "
        "this-file)",
    )
    files = [config.data_path, config.eval_path, config.heads_file, config.kl_text]
    files += [config.arc_path, config.opinion_path]
    record = {"model": model_identity(config.model or None)}
    check_inputs(out, {**record, "files": input_files([f for f in files if f])}, status)


def _check_model_shape(config: SPTConfig) -> None:
    """Options against the model's shape, read from its config without the weights (skipped when
    the shape is not knowable here, e.g. a hub id not cached: checked again after loading).

    Raises:
        ConfigError: ``top_k`` above the model's heads; ``steer_layer`` beyond its blocks.
    """
    dims = model_dims(config.model or None)
    if dims is None:
        return
    n_layers, n_heads, _ = dims
    name = config.model or "the embedded SmolLM2-135M-Instruct"
    if config.top_k > n_layers * n_heads:
        raise ConfigError(
            f"top_k={config.top_k} but {name} has {n_layers * n_heads} heads ({n_layers} layers x "
            f"{n_heads}); lower --top-k"
        )
    if "caa" in config.methods and config.steer_layer >= n_layers:
        raise ConfigError(
            f"steer_layer={config.steer_layer} but {name} has blocks 0-{n_layers - 1}; lower "
            "--steer-layer (-1 = the middle block)"
        )


def _check_kl_text(config: SPTConfig) -> None:
    """The KL text is readable UTF-8 with at least one paragraph (its token counts are checked
    when the tokenizer is loaded).

    Raises:
        ConfigError: unreadable, not UTF-8, or without a paragraph.
    """
    if not config.kl_text:
        return
    from sycointerp.evaluate.capability import read_passages

    try:
        passages = read_passages(config.kl_text)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"kl_text (--kl-text) {config.kl_text} is not a readable UTF-8 text file "
            f"({type(err).__name__}); pass a plain-text file"
        ) from None
    if not passages:
        raise ConfigError(
            f"kl_text (--kl-text) {config.kl_text} holds no paragraph; pass a plain-text file "
            "with paragraphs separated by blank lines"
        )


def _check_heads_file(config: SPTConfig) -> None:
    """``heads_file`` against the model's head grid, read without loading its weights.

    Raises:
        HeadFileError: unreadable or malformed file, another model's grid, KV heads, or fewer
            heads than ``top_k``.
    """
    if not config.heads_file:
        return
    ranking = read_heads_csv(config.heads_file)
    dims = model_dims(config.model or None)
    if dims is not None:
        name = config.model or EMBEDDED_MODEL_NAME  # names are compared after loading
        ranking.require(HeadGrid(*dims), "query", what="heads file", model=name)
    if config.top_k:
        ranking.top(config.top_k)


# Keep the base model's logits on the KL passages when they fit in this much memory (40
# passages: 1.0 GB for SmolLM2): every method then runs one forward per batch instead of two.
KEEP_BASE_LOGITS_BYTES = 2 << 30
KL_MIN_TOKENS = 16  # kl_on_text's min_tokens: shorter paragraphs (headings) are skipped


def _kl_to_base(config: SPTConfig) -> Callable[[torch.nn.Module], TextKL]:
    """``KL(base || model)`` on the configured passages, as a function of the model; the base
    model's logits computed once where they fit (:data:`KEEP_BASE_LOGITS_BYTES`), else both
    models run per call. The two give identical numbers (same batches).

    Inside :func:`reusing_kl_reference` (the study, whose sweep runs many jobs) the kept logits
    are reused by the next job with the same model, passages and file: the key includes the
    file's size and modification time, so an edited file is read again. Outside it nothing is
    kept after the job.
    """
    from sycointerp.evaluate import kl_on_text, kl_to_reference, reference_logits
    from sycointerp.evaluate.capability import reference_bytes

    stat = os.stat(config.kl_text)
    key = (config.model, config.device, config.dtype, config.trust_remote_code)
    key += (config.kl_text, stat.st_size, stat.st_mtime_ns, config.kl_passages)
    if _KL_REFERENCE is not None and _KL_REFERENCE.get("key") == key:
        return _KL_REFERENCE["kl"]
    hf, tok, name = _load(config)
    base = hook_model(hf, tok, name)
    args = dict(n_passages=config.kl_passages)
    _check_kl_passages(config, tok)
    if reference_bytes(config.kl_passages, 128, base.cfg.d_vocab) > KEEP_BASE_LOGITS_BYTES:
        return lambda model: kl_on_text(base, model, config.kl_text, **args)
    reference = reference_logits(base, config.kl_text, **args)

    def kl(model: torch.nn.Module) -> TextKL:
        return kl_to_reference(reference, model)

    if _KL_REFERENCE is not None:  # at most one set of logits is held
        _KL_REFERENCE.clear()
        _KL_REFERENCE.update(key=key, kl=kl)
    return kl


def _check_kl_passages(config: SPTConfig, tokenizer) -> None:
    """At least one paragraph of the KL text is long enough to score.

    Raises:
        ConfigError: none is.
    """
    from sycointerp.evaluate.capability import read_passages

    lengths = [len(tokenizer(p)["input_ids"]) for p in read_passages(config.kl_text)]
    if max(lengths, default=0) < KL_MIN_TOKENS:
        raise ConfigError(
            f"kl_text (--kl-text) {config.kl_text}: no paragraph has {KL_MIN_TOKENS} tokens (the "
            f"longest has {max(lengths, default=0)}); pass longer text"
        )


# The last job's kept base logits while reusing_kl_reference() is active, else None.
_KL_REFERENCE: dict[str, Any] | None = None


@contextmanager
def reusing_kl_reference() -> Iterator[None]:
    """Within the block, jobs in this process reuse the base model's KL logits (see
    :func:`_kl_to_base`); on exit they are released."""
    global _KL_REFERENCE
    outer, _KL_REFERENCE = _KL_REFERENCE, ({} if _KL_REFERENCE is None else _KL_REFERENCE)
    try:
        yield
    finally:
        _KL_REFERENCE = outer


def _run_methods(
    config: SPTConfig, out: Path, acc, progress: bool, split: tuple[list[Question], list[Question]]
) -> dict:
    """:func:`run` after the main process has prepared (and locked) ``out``."""
    acc.wait_for_everyone()
    train_qs, eval_qs = split
    heads = _shared_heads(
        acc, lambda: choose_heads(config, train_qs, out / "ranking", progress=progress)
    )
    if acc.is_main_process:
        write_json(
            out / "heads.json",
            {
                **heads.to_json(),
                "n_train_questions": len(train_qs),
                "n_eval_questions": len(eval_qs),
            },
        )
    examples = tokenize_dialogues(
        _load(config)[1],
        build_dialogues(
            train_qs, kinds=config.kinds, seed=config.seed, system=config.system or None
        ),
    )
    base = _kl_to_base(config) if acc.is_main_process and config.kl_text else None
    rows = [
        _run_method(run, config, heads, examples, eval_qs, base, out, acc, progress, train_qs)
        for run in config.runs()
    ]
    report = {
        "model": config.model or "embedded SmolLM2-135M-Instruct",
        "heads": heads.to_json(),
        "n_train_questions": len(train_qs),
        "n_train_dialogues": len(examples),
        "n_eval_questions": len(eval_qs),
        "rows": rows,
    }
    if acc.is_main_process:
        comparisons, pooled = _paired(out, config)
        report["paired"] = [c.to_json() for c in comparisons]
        report["pooled"] = [c.to_json() for c in pooled]
        text = results_table(rows) + "\n"
        if comparisons:
            text += "\n" + comparison_table(comparisons) + "\n"
        if pooled:
            text += "\n" + pooled_table(pooled) + "\n"
        stance_cmp = _paired_stances(out, config)
        report["paired_stances"] = [c.to_json() for c in stance_cmp]
        text += "\n" + stance_table(rows, config) + "\n"
        if stance_cmp:
            text += "\n" + stance_comparison_table(stance_cmp) + "\n"
        atomic_write(out / "results.md", lambda p: Path(p).write_text(text))
        write_json(out / "report.json", report)
        write_report(out)
    return report


def _stances_of(directory: Path) -> dict[str, StanceEval]:
    """The stance evaluations saved under a method's directory, by variant."""
    return {
        path.name.removeprefix("stance-"): StanceEval.load(path)
        for path in sorted(directory.glob("stance-*"))
    }


def _paired_stances(out: Path, config: SPTConfig) -> list[StanceComparison]:
    """SPT (or the first method) against every other run on the stance measures."""
    runs = config.runs()
    evals = {run.name: _stances_of(out / run.name) for run in runs}
    reference = "spt" if "spt" in evals else runs[0].name
    return compare_stances(evals, reference) if len(evals) > 1 else []


def _paired(out: Path, config: SPTConfig) -> tuple[list[MethodComparison], list[PooledComparison]]:
    """SPT (or, without it, the first method) against every other run, paired by item; and, for
    controls drawn more than once, against each control's draws pooled per item."""
    runs = config.runs()
    evals = {run.name: SycophancyEval.load(out / run.name) for run in runs}
    reference = "spt" if "spt" in evals else runs[0].name
    groups: dict[str, list[str]] = {}
    for run in runs:
        if run.is_control and config.draws > 1 and run.name != reference:
            groups.setdefault(run.method, []).append(run.name)
    paired = compare_methods(evals, reference) if len(evals) > 1 else []
    return paired, compare_pooled(evals, reference, groups)
