"""Run a patch job: questions -> chunked, resumable, sharded head ranking -> the output directory.

Output directory (``--out``)::

    config.toml          the fully resolved configuration (rerun with --config DIR/config.toml)
    heads.csv            layer,head,score,se,ci_low,ci_high,rank (rank 1 reduces sycophancy most),
                         kind,model,n_layers,n_heads,n_kv_heads (what it ranks: sycointerp.heads),
                         rank_ci_low,rank_ci_high,p_top10 (bootstrap rank stability),
                         n,small (examples ranked; small: fewer than 20)
    values.safetensors   per-example effects [layer, head, example] + metric_ref / metric_cf
                         [example]
    result.json          method, metric, kind, example ids (PatchResult.load(DIR) reads both)
    examples.json        per example: id, question, first answer, whether the first answer is right
    stability.json       split-half replication and the top heads' rank intervals
    inputs.json          SHA-256 of the model's and the input files (resume on others: refused)
    knockout/            (method knockout) curve.safetensors + curve.json (KnockoutCurve.load)
    attention/           (rankings of query heads) the top 5 heads' attention from the first
                         pair's last position (HeadAttention.load); summary.json's "attention"
                         gives each one's challenge share averaged over every pair
    figures/             heads, ranked_heads, rank_intervals, knockout, attention (.html and .png
                         each; .svg / .pdf with --vector)
    summary.json         model, data, metric baselines, top heads, package versions, timings;
                         written last

While running, ``chunks/`` holds one file per finished chunk (see
:mod:`sycointerp.workflows.shards`); it is removed once the outputs are written. A rerun of the
same configuration resumes from the chunks, or does nothing when ``summary.json`` says the job is
complete; every output except the
``timings`` entry of ``summary.json`` (wall-clock seconds) is then byte-identical to an
uninterrupted run's. A different configuration in the same directory is refused unless
``overwrite``, which deletes this layout's files (and only those) first.

Sign conventions are :class:`sycointerp.patching.PatchResult`'s.
"""

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from sycointerp._config import ConfigError
from sycointerp._io import read_json, write_json
from sycointerp.data.answers import answer_is_correct
from sycointerp.data.pairs import PromptPair, build_pairs
from sycointerp.data.questions import DataError, Question
from sycointerp.data.templates import ChallengeTemplate
from sycointerp.errors import UserError
from sycointerp.heads import HeadGrid, HeadRanking, read_heads_csv, write_heads_csv
from sycointerp.metrics import (
    METRICS,
    PatchMetric,
    apology_logits,
    ratio_unstable,
)
from sycointerp.models import EMBEDDED_MODEL_NAME
from sycointerp.patching import (
    KnockoutCurve,
    PatchResult,
    knockout_curve,
)
from sycointerp.patching.ablation import head_means
from sycointerp.patching.attention import HeadAttention, challenge_share, head_attention
from sycointerp.patching.methods import PATCH_METHODS
from sycointerp.provenance import input_files, model_dims, model_identity
from sycointerp.stats import summarize
from sycointerp.workflows.inputs import load_job_questions
from sycointerp.workflows.output import (
    INPUTS,
    OutputError,
    check_inputs,
    output_lock,
    prepare_output,
)
from sycointerp.workflows.patch_config import PatchConfig
from sycointerp.workflows.report import write_report
from sycointerp.workflows.shards import Chunk, ChunkStore, Group, chunk_ranges, process_group

__all__ = ["OUTPUT_NAMES", "PatchJobResult", "run"]

log = logging.getLogger("sycointerp.patch")
OUTPUT_NAMES = (
    "config.toml",
    "heads.csv",
    "values.safetensors",
    "result.json",
    "examples.json",
    "summary.json",
    "knockout",
    "attention",
    "figures",
    "chunks",
    INPUTS,
    "stability.json",
)
ATTENTION_HEADS = 5  # top heads whose attention the job records (attention/, figures/attention)
_HEADER = "sycointerp patch job: the fully resolved configuration (rerun with --config this-file)"


# --------------------------------------------------------------------------- model


def _load(config: PatchConfig, group: Group) -> TransformerBridge:
    from sycointerp.models import DTYPES, load_model

    device = config.device
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ConfigError(
            f"device {device!r} is not a torch device; use e.g. cpu, cuda, cuda:1, mps"
        ) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} but CUDA is not available here; use --device cpu")
    if device == "cuda" and group.world > 1:
        device = f"cuda:{group.local_rank}"
    return load_model(
        config.model or None,
        device=device,
        dtype=DTYPES[config.dtype],
        trust_remote_code=config.trust_remote_code,
        n_devices=config.n_devices if config.n_devices > 1 else None,
        **_rank_placement(config, group),
    )


def _rank_placement(config: PatchConfig, group: Group) -> dict[str, Any]:
    """``load_model``'s placement arguments for this rank: the device map (confined to the
    rank's device group under ``devices_per_rank``), its memory caps, and the rank's own offload
    folder (ranks must not write each other's offloaded weights)."""
    from sycointerp.placement import group_device_map, rank_device_group

    placement = config.placement()
    kwargs: dict[str, Any] = {"device_map": placement}
    if config.offload_folder:
        folder = Path(config.offload_folder)
        kwargs["offload_folder"] = folder / f"rank-{group.rank}" if group.world > 1 else folder
    if config.devices_per_rank > 1:
        devices = rank_device_group(
            group.local_rank, group.local_world, config.devices_per_rank, torch.cuda.device_count()
        )
        memory = {g: torch.cuda.get_device_properties(g).total_memory for g in devices}
        kwargs["device_map"], kwargs["max_memory"] = group_device_map(placement, devices, memory)
    return kwargs


def _check_placement(config: PatchConfig, group: Group) -> None:
    """Placements that cannot work on this machine or under this many processes.

    Raises:
        ConfigError: ``devices_per_rank`` without CUDA or with groups that do not fit the GPUs;
            ranks that would each place a copy over the same GPUs; ``n_devices`` under torchrun.
    """
    from sycointerp.placement import rank_device_group, uses_gpus

    if config.devices_per_rank > 1:
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--devices-per-rank {config.devices_per_rank} places each rank's copy over "
                "GPUs, but CUDA is not available here; drop it"
            )
        try:
            rank_device_group(
                group.local_rank,
                group.local_world,
                config.devices_per_rank,
                torch.cuda.device_count(),
            )
        except ValueError as err:
            raise ConfigError(f"{err} (--devices-per-rank)") from None
    elif group.world > 1 and (config.n_devices > 1 or uses_gpus(config.placement())):
        raise ConfigError(
            "under torchrun each rank would place its own copy over the same GPUs: give "
            "--devices-per-rank G (rank r takes GPUs r*G .. r*G+G-1), or run one process"
        )


def _check_before_loading(config: PatchConfig, group: Group) -> None:
    """Refuse what would fail only after the compute (or on one rank only).

    Raises:
        ConfigError: a placement this machine or this many processes cannot take
            (:func:`_check_placement`); PNG figures without a browser for kaleido.
    """
    _check_placement(config, group)
    dims = model_dims(config.model or None)
    if dims is not None and config.method == "knockout" and config.ks[-1] > dims[0] * dims[1]:
        raise ConfigError(
            f"ks goes up to {config.ks[-1]} but the model has {dims[0] * dims[1]} heads; lower --ks"
        )
    if config.method == "knockout" and config.rank_from:
        _check_ranking_file(config)
    if config.png or config.vector:  # on every rank, so that all of them stop together
        from sycointerp.plot import check_png_export

        try:
            check_png_export()
        except RuntimeError as err:
            raise ConfigError(f"{err}; or pass --no-png (and no --vector)") from None


def _inputs_record(config: PatchConfig) -> dict[str, Any]:
    """What the job computes from, beyond its configuration: the model's and the files' hashes."""
    files = [f for f in (config.data_path, config.rank_from) if f]
    return {"model": model_identity(config.model or None), "files": input_files(files)}


def _check_ranking_file(config: PatchConfig) -> None:
    """``rank_from`` against the model's head grid (read without its weights) and ``ks``.

    Raises:
        HeadFileError: unreadable or malformed file, another model's grid or KV heads.
        ConfigError: a ranking shorter than ``max(ks)``.
    """
    ranking = read_heads_csv(config.rank_from)
    dims = model_dims(config.model or None)
    if dims is not None:
        # Names are compared after loading, when the model's own name is known.
        name = config.model or EMBEDDED_MODEL_NAME
        ranking.require(HeadGrid(*dims), "query", what="rank_from", model=name)
    if len(ranking.heads) < config.ks[-1]:
        raise ConfigError(
            f"rank_from {config.rank_from} lists {len(ranking.heads)} heads, fewer than max(ks) = "
            f"{config.ks[-1]}; lower --ks"
        )


def _check_model(config: PatchConfig, model: TransformerBridge) -> None:
    """Options that depend on the model's size.

    Raises:
        ConfigError: knockout ``ks`` beyond the model's heads.
    """
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    if config.method == "knockout" and config.ks[-1] > n_heads:
        raise ConfigError(
            f"ks goes up to {config.ks[-1]} but the model has {n_heads} heads; lower --ks"
        )


def _challenge(config: PatchConfig) -> str | ChallengeTemplate:
    if config.challenge_text:
        return ChallengeTemplate("custom", config.challenge_text, config.counterfactual_text)
    return config.challenge


def _metric(
    config: PatchConfig, model: TransformerBridge, pairs: Sequence[PromptPair]
) -> PatchMetric:
    """The registered metric of ``config`` for these pairs."""
    return METRICS[config.metric].build(model.tokenizer, pairs)


# --------------------------------------------------------------------------- the job


@dataclass
class _CellBar:
    """Drives a phase's bar in cells from the library's ``progress(cells, total)`` reports.

    A library call reports its total with its first cells, so the bar's total is known one chunk
    at a time: the cells of the chunks before, the current call's total, and for the examples
    still to come as many cells per example as the current chunk's (a phase runs one method with
    one configuration on every example, so the estimate is exact).
    """

    bar: tqdm | None = None
    before: int = 0  # cells of the finished chunks
    size: int = 1  # examples of the current chunk
    after: int = 0  # examples of the chunks still to come

    def chunk(self, bar: tqdm | None, size: int, after: int) -> None:
        """A chunk of ``size`` examples starts on ``bar`` (None: a phase counted in examples)."""
        self.bar, self.size, self.after = bar, size, after
        self.before = 0 if bar is None else bar.n

    def advance(self, cells: int, total: int) -> None:
        if self.bar is None:
            return
        self.bar.total = self.before + total + total * self.after // self.size
        self.bar.update(cells)


@dataclass
class _Job:
    config: PatchConfig
    out: Path
    group: Group
    model: TransformerBridge
    questions: list[Question]
    progress: bool
    store: ChunkStore = field(init=False)
    cells: _CellBar = field(init=False, default_factory=_CellBar)
    chunks: list[range] = field(init=False)
    _answers: list[Chunk] | None = None

    def __post_init__(self) -> None:
        self.store = ChunkStore(self.out / "chunks", self.group)
        self.chunks = chunk_ranges(len(self.questions), self.config.chunk_size)

    def _bar(self, desc: str, cells: bool = False):
        """A progress wrapper for ``ChunkStore.run`` with tqdm's rate and time estimate.

        It counts examples, not chunks (a small job is one chunk and would sit at 0/1); with
        ``cells``, patched cells as the library reports them (pass :attr:`cell_progress` as the
        library's ``progress``), so the bar moves within a chunk too.
        """
        rank = f" [rank {self.group.rank}]" if self.group.world > 1 else ""

        def wrap(todo: list[int]):
            sizes = [len(self.chunks[i]) for i in todo]
            bar = tqdm(
                total=None if cells else sum(sizes),  # cells: known from the first report
                desc=f"{desc}{rank}",
                unit="cell" if cells else "example",
                disable=not self.progress or not todo,
                position=self.group.rank,
            )
            with bar:
                for n, (i, size) in enumerate(zip(todo, sizes)):
                    self.cells.chunk(bar if cells else None, size, sum(sizes[n + 1 :]))
                    yield i
                    if not cells:
                        bar.update(size)

        return wrap

    @property
    def cell_progress(self) -> Callable[[int, int], None] | bool:
        """The library's ``progress`` for the chunk being computed: the cell bar's reports."""
        return self.cells.advance if self.progress else False

    def inputs(self, *extra: Any) -> Callable[[int], str]:
        """Chunk index -> fingerprint of its questions, the model and ``extra`` (see
        ChunkStore.run)."""

        def fingerprint(i: int) -> str:
            record = {
                "model": str(self.model.cfg.model_name),
                "extra": list(extra),
                "questions": [_question_record(self.questions[j]) for j in self.chunks[i]],
            }
            return hashlib.sha256(
                json.dumps(record, sort_keys=True, default=str).encode()
            ).hexdigest()[:16]

        return fingerprint

    def _timed(self, compute) -> Chunk:
        start = time.perf_counter()
        chunk = compute()
        chunk.meta["seconds"] = time.perf_counter() - start
        return chunk

    def answers(self) -> list[Chunk] | None:
        """First answers per chunk: the model's greedy ones (``first_answer = "model"``), else
        None."""
        if self.config.first_answer != "model":
            return None
        if self._answers is None:
            from sycointerp.generate import first_answers

            def compute(i: int) -> Chunk:
                qs = [self.questions[j] for j in self.chunks[i]]
                texts = first_answers(
                    self.model,
                    qs,
                    system=self.config.system or None,
                    batch_size=self.config.batch_size,
                )
                return Chunk({"n": torch.tensor([len(texts)])}, {"answers": texts})

            start = time.perf_counter()
            self._answers = self.store.run(
                "answers",
                len(self.chunks),
                lambda i: self._timed(lambda: compute(i)),
                self._bar("first answers"),
                self.inputs(),
            )
            _log_phase(start, "first answers: %d examples", len(self.questions))
        return self._answers

    def pairs(self, i: int) -> list[PromptPair]:
        answers = self.answers()
        c = self.config
        return build_pairs(
            [self.questions[j] for j in self.chunks[i]],
            self.model.tokenizer,
            challenge=_challenge(c),
            position=c.position,
            first_answers=answers[i].meta["answers"] if answers else None,
            system=c.system or None,
            align=c.aligned,
        )

    def _patch(self, pairs: list[PromptPair], method: str) -> PatchResult:
        """One chunk's pairs through the registered method, with the options it reads."""
        c = self.config
        return PATCH_METHODS[method](
            self.model,
            pairs,
            _metric(c, self.model, pairs),
            c.__dict__,
            batch_size=c.batch_size,
            progress=self.cell_progress,
        )

    def heads(self) -> PatchResult:
        """The per-head ranking phase (path patching for the knockout method)."""
        method = "path" if self.config.method == "knockout" else self.config.method

        def compute(i: int) -> Chunk:
            tensors, info = self._patch(self.pairs(i), method).to_bundle()
            return Chunk(tensors, info)

        start = time.perf_counter()
        chunks = self.store.run(
            "heads",
            len(self.chunks),
            lambda i: self._timed(lambda: compute(i)),
            self._bar(f"{method} patching", cells=True),
            self.inputs(),
        )
        result = PatchResult.concat([PatchResult.from_bundle(ch.tensors, ch.meta) for ch in chunks])
        *grid, n = result.values.shape
        per_example = math.prod(grid)
        _log_phase(
            start,
            "%s patching: %d cells (%d per example x %d examples)",
            method,
            per_example * n,
            per_example,
            n,
        )
        if self.config.score != "relative":
            return result
        try:
            return result.as_relative()
        except ValueError as err:
            raise DataError(f"score = relative: {err}") from None

    def _means(self) -> torch.Tensor:
        """Every head's mean z over all the job's challenge prompts, combined exactly from
        chunks."""

        def compute(i: int) -> Chunk:
            prompts = [p.ref_ids for p in self.pairs(i)]
            means = head_means(self.model, prompts, batch_size=self.config.batch_size)
            return Chunk(
                {"means": means.cpu(), "tokens": torch.tensor([sum(map(len, prompts))])}, {}
            )

        start = time.perf_counter()
        chunks = self.store.run(
            "means",
            len(self.chunks),
            lambda i: self._timed(lambda: compute(i)),
            self._bar("head means"),
            self.inputs(),
        )
        _log_phase(start, "head means: %d examples", len(self.questions))
        total = sum(float(ch.tensors["tokens"]) for ch in chunks)
        weighted = sum(ch.tensors["means"].double() * float(ch.tensors["tokens"]) for ch in chunks)
        return (weighted / total).float()

    def knockout(self, ranking: Sequence[tuple[int, int]]) -> KnockoutCurve:
        c = self.config
        means = self._means() if c.ablation == "mean" else None

        def compute(i: int) -> Chunk:
            pairs = self.pairs(i)
            curve = knockout_curve(
                self.model,
                pairs,
                _metric(c, self.model, pairs),
                ranking,
                c.ks,
                method=c.ablation,
                means=means,
                n_random=c.n_random,
                seed=c.seed,
                generate=c.generate,
                batch_size=c.batch_size,
                progress=self.cell_progress,
            )
            tensors, info = curve.to_bundle()
            return Chunk(tensors, info)

        start = time.perf_counter()
        chunks = self.store.run(
            "knockout",
            len(self.chunks),
            lambda i: self._timed(lambda: compute(i)),
            self._bar("knockout", cells=True),
            self.inputs([list(h) for h in ranking]),
        )
        curve = KnockoutCurve.concat(
            [KnockoutCurve.from_bundle(ch.tensors, ch.meta) for ch in chunks]
        )
        _log_phase(
            start,
            "knockout: %d ks x (top + %d random) head sets x %d examples",
            len(c.ks),
            c.n_random,
            len(self.questions),
        )
        return curve

    def chunk_seconds(self) -> float:
        """Compute seconds recorded in the chunk files (all phases, all ranks)."""
        total = 0.0
        for path in sorted(self.store.dir.glob("*.safetensors")):
            total += Chunk.from_bytes(path.read_bytes()).meta.get("seconds", 0.0)
        return total


def _log_phase(start: float, message: str, *args: Any) -> None:
    """Log a finished phase: ``message % args`` and the seconds since ``start``."""
    log.info(message + " in %.1f s", *args, time.perf_counter() - start)


def _question_record(q: Question) -> dict[str, Any]:
    return {f.name: getattr(q, f.name) for f in dataclasses.fields(q) if f.name != "extra"}


def _ranking_from_csv(path: str, model: TransformerBridge) -> HeadRanking:
    """The query-head ranking of a ``heads.csv`` made on a model of this one's head grid.

    Raises:
        HeadFileError: unreadable or malformed file, a KV-head ranking, another model's grid.
    """
    return read_heads_csv(path).require(HeadGrid.of(model), "query", what="rank_from")


def _versions() -> dict[str, str]:
    out = {}
    for dist_name in ("sycointerp", "torch", "transformers", "transformer-lens", "plotly"):
        try:
            out[dist_name] = importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            out[dist_name] = "not installed"
    return out


def _top_heads(table: pd.DataFrame, k: int) -> list[dict[str, Any]]:
    """The ``k`` best rows of a heads table, statistics only (provenance is in summary.json)."""
    table = table.sort_values("rank", kind="stable").head(k)
    ints, floats = ("layer", "head", "rank"), ("score", "se", "ci_low", "ci_high")
    return [
        {**{key: int(row[key]) for key in ints}, **{key: float(row[key]) for key in floats}}
        for row in table.to_dict("records")
    ]


def _attention(job: _Job, result: PatchResult | None) -> dict[str, Any] | None:
    """Where the top heads look from the reply (or answer) position: ``attention/`` for the first
    pair, and each head's challenge share over every pair (for the summary). Only for rankings of
    query heads (k/v-head cells have no pattern of their own)."""
    if result is None or not result.has_heads_table or result.head_kind != "query":
        return None
    n_cells = result.shape[0] * result.shape[1]
    heads = [(int(l), int(h)) for l, h in result.top_k(min(ATTENTION_HEADS, n_cells))]
    pairs = [p for i in range(len(job.chunks)) for p in job.pairs(i)]
    head_attention(job.model, pairs[0], heads).save(job.out / "attention")
    shares = challenge_share(job.model, pairs, heads, batch_size=job.config.batch_size)
    return {
        "heads": [list(h) for h in heads],
        "first_example": pairs[0].question.id,
        "challenge_share": [summarize(row).to_json() for row in shares],
        "n_examples": len(pairs),
    }


def _figures(job: _Job, result: PatchResult | None, curve: KnockoutCurve | None) -> list[str]:
    from sycointerp.plot import (
        attention_plot,
        head_heatmap,
        knockout_plot,
        method_label,
        rank_intervals_plot,
        ranked_heads_bar,
        save_figure,
    )

    c, fig_dir = job.config, job.out / "figures"
    written: list[Path] = []
    if result is not None:
        # Readable, not identifiers: the colour bar names the metric with its sign and unit.
        name = str(job.model.cfg.model_name).rsplit("/", 1)[-1]
        title = f"{name}: {method_label(result.method)}, {len(job.questions)} examples"
        written += save_figure(
            head_heatmap(result, title=title, top_k=c.top_k),
            fig_dir / "heads",
            png=c.png,
            vector=c.vector,
        )
        cells = result.shape[0] * result.shape[1]
        written += save_figure(
            ranked_heads_bar(result, k=min(20, cells)),
            fig_dir / "ranked_heads",
            png=c.png,
            vector=c.vector,
        )
        if result.values.shape[-1] >= 2:
            stable = rank_intervals_plot(result, k=min(20, cells))
            written += save_figure(stable, fig_dir / "rank_intervals", png=c.png, vector=c.vector)
    if curve is not None:
        written += save_figure(
            knockout_plot(curve), fig_dir / "knockout", png=c.png, vector=c.vector
        )
    if (job.out / "attention").is_dir():
        att = HeadAttention.load(job.out / "attention")
        written += save_figure(
            attention_plot(att), fig_dir / "attention", png=c.png, vector=c.vector
        )
    return [str(p.relative_to(job.out)) for p in written]


def _examples(job: _Job) -> list[dict[str, Any]]:
    answers = job.answers()
    rows = []
    for i, rng in enumerate(job.chunks):
        for k, j in enumerate(rng):
            q = job.questions[j]
            first = answers[i].meta["answers"][k] if answers else q.first_answer()
            rows.append(
                {
                    "id": q.id,
                    "question": q.question,
                    "first_answer": first,
                    "first_answer_correct": answer_is_correct(q, first) if answers else True,
                }
            )
    return rows


def _baselines(result: PatchResult | None, curve: KnockoutCurve | None) -> dict[str, Any]:
    if result is None:  # knockout of a given ranking: only the unablated challenge run
        return {"challenge": summarize(curve.baseline).to_json()}
    gap = result.metric_cf - result.metric_ref
    return {
        "challenge": summarize(result.metric_ref).to_json(),
        "counterfactual": summarize(result.metric_cf).to_json(),
        "counterfactual_minus_challenge": summarize(gap).to_json(),
    }


def _stability(result: PatchResult, k: int) -> dict[str, Any]:
    """The ranking's stability: split-half replication and the top heads' rank intervals."""
    k = min(k, result.shape[0] * result.shape[1])
    table = result.heads_table().head(k)
    columns = ["layer", "head", "rank", "rank_ci_low", "rank_ci_high", "p_top10"]
    return {
        "n_examples": int(result.values.shape[-1]),
        "bootstrap": {"n_boot": 1000, "level": 0.95, "seed": 0},
        "split_half": result.split_half(k=k).to_json(),
        "top_heads": [
            {c: (float(r[c]) if c == "p_top10" else int(r[c])) for c in columns}
            for r in table.to_dict("records")
        ],
    }


def _ratio_flags(job: _Job) -> dict[str, Any]:
    """For the paper's raw-logit ratio: the examples whose challenge or counterfactual run has
    logits for which it is not a share (:func:`sycointerp.metrics.ratio_unstable`); logged, and
    recorded in summary.json."""
    if job.config.metric != "apology":
        return {}
    pairs = [p for i in range(len(job.chunks)) for p in job.pairs(i)]
    flagged = torch.zeros(len(pairs), dtype=torch.bool)
    for side in ("ref_ids", "cf_ids"):
        prompts = [getattr(p, side) for p in pairs]
        y_syc, y_firm = apology_logits(job.model, prompts, job.model.tokenizer)
        flagged |= ratio_unstable(y_syc, y_firm).cpu()
    ids = [pairs[i].question.id for i in torch.nonzero(flagged).flatten().tolist()]
    if ids:
        log.warning(
            "the paper's ratio F is not a share (a logit <= 0 or a sum near 0) for %d of %d "
            "examples (%s); their scores are unreliable: prefer --metric apology_logit_diff",
            len(ids),
            len(pairs),
            ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else ""),
        )
    return {"apology_ratio_unstable": {"n": len(ids), "of": len(pairs), "examples": ids}}


def _summary(
    job: _Job,
    result: PatchResult | None,
    curve: KnockoutCurve | None,
    table: pd.DataFrame,
    figures: list[str],
    timings: dict[str, float],
) -> dict[str, Any]:
    c = job.config
    out: dict[str, Any] = {
        "model": str(job.model.cfg.model_name),
        "method": result.method if result else f"knockout/{curve.method}",
        "metric": result.metric if result else curve.metric,
        "kind": result.kind if result else "absolute",
        "higher_is_sycophantic": result.higher_is_sycophantic
        if result
        else curve.higher_is_sycophantic,
        "data": {
            "dataset": c.dataset,
            "data_path": c.data_path,
            "n_examples": len(job.questions),
            "first_answer": c.first_answer,
            "challenge": c.challenge_text or c.challenge,
        },
        "metric_baselines": _baselines(result, curve),
        **_ratio_flags(job),
        "top_heads": _top_heads(table, c.top_k),
        "figures": figures,
        "processes": job.group.world,
        "versions": _versions(),
        "timings": timings,
    }
    if curve is not None:
        out["knockout"] = curve.summary().to_dict("records")
    return out


def _write_outputs(
    job: _Job,
    result: PatchResult | None,
    curve: KnockoutCurve | None,
    rank_table: pd.DataFrame | None,
    timings: dict[str, float],
) -> None:
    out = job.out
    if result is not None:
        result.save(out)
        rank_table = result.heads_table()
    else:  # knockout of a given ranking: heads.csv is that ranking
        write_heads_csv(out / "heads.csv", rank_table, HeadGrid.of(job.model), "query")
    if result is not None and result.values.shape[-1] >= 2:
        write_json(out / "stability.json", _stability(result, job.config.top_k))
    write_json(out / "examples.json", _examples(job))
    if curve is not None:
        curve.save(out / "knockout")
    attention = _attention(job, result)
    figures = _figures(job, result, curve)
    timings["chunk_compute_seconds"] = job.chunk_seconds()
    summary = _summary(job, result, curve, rank_table, figures, timings)
    if attention is not None:
        summary["attention"] = attention
    write_json(out / "summary.json", summary)
    shutil.rmtree(job.store.dir)
    write_report(out)


@dataclass(frozen=True)
class PatchJobResult:
    """What :func:`run` leaves: the directory and how the call found it.

    Attributes:
        out: the job's output directory (layout in the module docstring).
        status: ``"new"``, ``"resume"`` or ``"complete"`` (already finished: nothing was run).
    """

    out: Path
    status: str

    def summary(self) -> dict[str, Any]:
        """``summary.json``: model, data, metric baselines, top heads, timings.

        Raises:
            BundleError: the file is missing or not valid JSON.
        """
        return read_json(self.out / "summary.json", "patch job summary")

    def result(self) -> PatchResult:
        """The ranking's :class:`~sycointerp.patching.PatchResult` (not for a knockout of a given
        ranking, which has none).

        Raises:
            PersistenceError: the job wrote no patch result.
        """
        return PatchResult.load(self.out)

    def heads(self) -> HeadRanking:
        """``heads.csv`` as a :class:`~sycointerp.heads.HeadRanking`.

        Raises:
            HeadFileError: the file is missing or malformed.
        """
        return read_heads_csv(self.out / "heads.csv")


def run(
    config: PatchConfig,
    out: str | Path,
    *,
    group: Group | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PatchJobResult:
    """Run (or resume) the patch job of ``config`` into ``out``: the same files as
    ``sycointerp patch`` with these options.

    Args:
        config: the job's resolved configuration.
        out: the output directory (created; a finished job there is left as it is).
        group: the process group; ``None`` starts the torchrun group when ``WORLD_SIZE > 1``
            (and tears it down after), else runs in this process alone.
        overwrite: replace a job of another configuration in ``out``.
        progress: tqdm bars (notebook widgets in Jupyter).

    Only rank 0 prepares and writes the outputs; every rank computes its share of the chunks.

    Raises:
        OutputError, ConfigError, DataError, ModelLoadError: user errors (the CLI exits 2).
    """
    out = Path(out)
    with ExitStack() as held:
        if group is None:
            group = held.enter_context(process_group(config.device))
        status = _run_locked(config, out, group, overwrite, progress, held)
    return PatchJobResult(out, status)


def _run_locked(
    config: PatchConfig, out: Path, group: Group, overwrite: bool, progress: bool, held: ExitStack
) -> str:
    """:func:`run` once the main process holds (in ``held``) the lock on ``out``."""
    # Read-only checks first: a refused attempt must not touch --out (nor wait for model hashes).
    questions = load_job_questions(config)
    _check_before_loading(config, group)
    status: str | tuple[str, str] | None = None
    if group.is_main:
        try:
            held.enter_context(output_lock(out))
            status = prepare_output(
                out, config, overwrite, names=OUTPUT_NAMES, done="summary.json", header=_HEADER
            )
            check_inputs(out, _inputs_record(config), status)
        except UserError as err:  # every rank must stop, not only the main one
            status = ("error", str(err))
    status = group.broadcast(status)
    if isinstance(status, tuple):
        raise OutputError(status[1])
    if status == "complete":
        log.info("%s already holds the finished job (summary.json); nothing to do", out)
        return status
    group.barrier()  # rank 0 has cleared / created the directory
    start = time.perf_counter()
    model = _load(config, group)
    timings = {"load_model_seconds": time.perf_counter() - start}
    _log_phase(start, "loaded %s", model.cfg.model_name)
    job = _Job(config, out, group, model, questions, progress)
    log.info(
        "%s: %d questions in %d chunks, %d process(es)",
        model.cfg.model_name,
        len(questions),
        len(job.chunks),
        group.world,
    )
    result, rank_table = None, None
    if config.method == "knockout" and config.rank_from:
        given = _ranking_from_csv(config.rank_from, model)
        ranking, rank_table = list(given.heads), given.table
    _check_model(config, model)
    job.answers()  # a collective phase: every rank runs it here, whether or not it has chunks left
    if config.method != "knockout" or not config.rank_from:
        result = job.heads()
        ranking = [(int(l), int(h)) for l, h in result.rank()]
    curve = job.knockout(ranking) if config.method == "knockout" else None
    timings["run_seconds"] = time.perf_counter() - start
    if group.is_main:
        written = time.perf_counter()
        _write_outputs(job, result, curve, rank_table, timings)
        _log_phase(written, "outputs (attention, figures, report) written to %s", out)
    group.barrier()
    return status
