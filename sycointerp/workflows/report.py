"""``report.html``: one self-contained, offline page per job directory (patch job, SPT run or
trust study), rebuilt from the directory's files alone (``sycointerp report DIR``).

The page holds plotly.js once (inlined, so it opens without a network) and every figure as a
plotly div drawn from the saved results, so it shows exactly what the files hold. Sections, where
the directory has the data: the configuration; the metric baselines with intervals; the head
heatmap, the ranked heads and the rank intervals; the knockout curve; the top heads' attention
to the challenge; the heads table; the SPT
comparison tables and the re-patching heatmaps; the study's tables and figures; per-example
values; links to every file. Intervals resting on fewer than 20 examples are marked "few
examples", as in the tables. Size: plotly.js (about 4.7 MB) plus the figures' data.

Raises (from :func:`build_report`): :class:`ReportError` (a ``UserError``) when the directory holds
no finished job.
"""

import html
import logging
import tomllib
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from sycointerp._io import atomic_write, read_json
from sycointerp.errors import UserError
from sycointerp.stats import SMALL_SAMPLE
from sycointerp.workflows.output import save_figure_files

__all__ = [
    "ReportError",
    "build_report",
    "write_report",
    "job_kind",
    "markdown_to_html",
    "stance_figure",
    "REPORT",
]

log = logging.getLogger("sycointerp.report")
REPORT = "report.html"
_DONE = {"patch": "summary.json", "spt": "report.json", "study": "study.json"}
# Where the both-stances tables begin in an SPT run's results.md (spt.stance_table writes it).
STANCE_TABLE_START = "Both stances (the model's own first answers"


class ReportError(UserError):
    """The directory holds no finished job to report on; the message names what is missing."""


def job_kind(directory: Path) -> str:
    """``"study"``, ``"spt"`` or ``"patch"``: which job wrote ``directory`` (by its final file).

    Raises:
        ReportError: none of ``study.json``, ``report.json``, ``summary.json`` is there.
    """
    if not directory.exists():
        raise ReportError(f"{directory} does not exist; pass a job's --out directory")
    if not directory.is_dir():
        raise ReportError(f"{directory} is a file, not a directory; pass the job's --out directory")
    for kind in ("study", "spt", "patch"):
        if (directory / _DONE[kind]).is_file():
            return kind
    raise ReportError(
        f"{directory} holds no finished job (no summary.json, report.json or study.json); run "
        "the job to the end first, or pass the job's --out directory"
    )


# --------------------------------------------------------------------------- page pieces


def _esc(text: Any) -> str:
    return html.escape(str(text))


def _inline(text: str) -> str:
    """Escape, then render **bold** and `code` spans of a markdown line."""
    out, parts = [], _esc(text).split("`")
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{part}</code>")
        else:
            bits = part.split("**")
            out.append("".join(f"<b>{b}</b>" if j % 2 else b for j, b in enumerate(bits)))
    return "".join(out)


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{_inline(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_to_html(text: str) -> str:
    """The markdown the jobs write (headings, paragraphs, ``-`` lists, pipe tables, bold, code)
    as HTML; anything else stays literal text (escaped)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(set(c) <= {"-", ":"} for c in cells):
                    rows.append(cells)
                i += 1
            blocks.append(_table(rows[1:], rows[0]))
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 6)
            blocks.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            blocks.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            blocks.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(blocks)


def _figure(fig, name: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}")


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_esc(title)}</h2>\n{body}\n</section>"


def _interval(s: dict[str, Any]) -> str:
    flag = " (few examples)" if s.get("n", SMALL_SAMPLE) < SMALL_SAMPLE else ""
    return f"{s['mean']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}] (n={s['n']}){flag}"


def _files(directory: Path) -> str:
    """Relative links to every file of the job (folders listed with their file count)."""
    items = []
    for path in sorted(directory.iterdir()):
        if path.name == REPORT:
            continue
        if path.is_dir():
            count = sum(1 for p in path.rglob("*") if p.is_file())
            items.append(
                f'<li><a href="{_esc(path.name)}/">{_esc(path.name)}/</a> ({count} files)</li>'
            )
        else:  # no sizes: summary.json's timings make its size vary between identical runs
            items.append(f'<li><a href="{_esc(path.name)}">{_esc(path.name)}</a></li>')
    return "<ul>" + "".join(items) + "</ul>"


def _config(directory: Path) -> str:
    path = directory / "config.toml"
    return f"<pre>{_esc(path.read_text(encoding='utf-8'))}</pre>" if path.is_file() else ""


# --------------------------------------------------------------------------- per job kind


def _result_sections(
    result, title: str, top_k: int = 10, stability: dict[str, Any] | None = None
) -> list[str]:
    """Heatmap (the job's ``top_k`` heads marked), ranked bar, rank intervals, the split-half
    replication (``stability``: a patch job's stability.json) and the heads table of a per-head
    PatchResult."""
    from sycointerp.plot import head_heatmap, rank_intervals_plot, ranked_heads_bar

    if not result.has_heads_table:
        return []
    cells = result.shape[0] * result.shape[1]
    n = result.values.shape[-1]
    figures = [_figure(head_heatmap(result, title=title, top_k=top_k), "heads")]
    figures.append(_figure(ranked_heads_bar(result, k=min(20, cells)), "ranked"))
    if n >= 2:
        figures.append(_figure(rank_intervals_plot(result, k=min(20, cells)), "rank-intervals"))
    table = result.heads_table().head(20)
    columns = [c for c in table.columns if c not in ("model", "n_layers", "n_heads", "n_kv_heads")]
    rows = [
        [f"{v:.4g}" if isinstance(v, float) else str(v) for v in r]
        for r in table[columns].itertuples(index=False)
    ]
    few = " (few examples: read the intervals with care)" if n < SMALL_SAMPLE else ""
    note = f"<p>{n} examples{few}.</p>" + _split_half(stability)
    return [
        _section("Heads", "\n".join(figures)),
        _section("Top heads (heads.csv)", note + _table(rows, columns)),
    ]


def _split_half(stability: dict[str, Any] | None) -> str:
    """One sentence on the split-half replication of a stability.json, or nothing."""
    half = (stability or {}).get("split_half")
    if not half or half.get("mean") is None:
        return ""
    return (
        f"<p>Split-half replication ({half['n_splits']} random splits into two halves of the "
        f"examples): Spearman correlation of the two rankings {half['mean']:.3f} "
        f"(2.5-97.5% of splits [{half['low']:.3f}, {half['high']:.3f}]), top-{half['k']} "
        f"overlap {half['top_k_overlap']:.2f}.</p>"
    )


def _job_top_k(directory: Path, default: int = 10) -> int:
    """The ``top_k`` of a job's config.toml (``[run]``), else ``default``."""
    path = directory / "config.toml"
    if not path.is_file():
        return default
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError:  # the marks are cosmetic: never fail a report over them
        return default
    return int(config.get("run", {}).get("top_k", default))


def _per_example(result, directory: Path) -> str:
    examples = (
        read_json(directory / "examples.json", "examples")
        if (directory / "examples.json").is_file()
        else []
    )
    top = result.rank()[0]
    effect = result.values[top]
    rows = []
    for i in range(result.values.shape[-1]):
        ex = examples[i] if i < len(examples) else {}
        rows.append(
            [
                str(ex.get("id", i)),
                str(ex.get("question", "")),
                f"{float(result.metric_ref[i]):+.3f}",
                f"{float(result.metric_cf[i]):+.3f}",
                f"{float(effect[i]):+.4f}",
            ]
        )
    header = ["id", "question", "challenge metric", "counterfactual metric"]
    header.append(f"effect of head {'.'.join(map(str, top))}")
    return _section("Per example", _table(rows, header))


def _knockout_table(curve) -> str:
    """Per measure and k: top-k with its interval, the random draws' mean and range, and the
    paired top - random difference with its interval."""
    rows = [
        [
            r["measure"],
            str(r["k"]),
            f"{r['top']:+.3f} [{r['top_ci_low']:+.3f}, {r['top_ci_high']:+.3f}]",
            f"{r['random_mean']:+.3f} ({r['random_min']:+.3f} to {r['random_max']:+.3f})",
            f"{r['top_minus_random']:+.3f} [{r['diff_ci_low']:+.3f}, {r['diff_ci_high']:+.3f}]",
        ]
        for r in curve.summary().to_dict("records")
    ]
    header = ["measure", "k", "top k [95% CI]", "random, mean (range)", "top - random [95% CI]"]
    n = int(curve.baseline.numel())
    flag = " (few examples)" if n < SMALL_SAMPLE else ""
    note = f"<p>{n} examples{flag}; {curve.n_random} random draws per k; paired over examples.</p>"
    return note + _table(rows, header)


def _attention_section(directory: Path, record: dict[str, Any] | None) -> str:
    """The top heads' attention on the first pair, and their challenge shares over every pair."""
    from sycointerp.patching.attention import HeadAttention
    from sycointerp.plot import attention_plot

    body = _figure(attention_plot(HeadAttention.load(directory / "attention")), "attention")
    if record:
        rows = [
            [f"L{l}H{h}", _interval(s)]
            for (l, h), s in zip(record["heads"], record["challenge_share"])
        ]
        note = (
            f"<p>Share of each head's attention (from the last prompt position) on the challenge "
            f"turn, mean over {record['n_examples']} examples [95% bootstrap CI]; the figure is "
            f"example {_esc(record['first_example'])}.</p>"
        )
        body += note + _table(rows, ["head", "challenge share"])
    return _section("Attention of the top heads to the challenge", body)


def _patch_page(directory: Path) -> tuple[str, list[str]]:
    from sycointerp.patching import KnockoutCurve, PatchResult
    from sycointerp.plot import knockout_plot, method_label, metric_label

    summary = read_json(directory / "summary.json", "job summary")
    what = f"{method_label(summary['method'])}, {metric_label(summary['metric'], summary['kind'])}"
    title = f"{summary['model']}: {what}"
    base = summary.get("metric_baselines", {})
    rows = [[name, _interval(s)] for name, s in base.items()]
    sections = [
        _section("Configuration", _config(directory)),
        _section("Metric baselines (mean [95% bootstrap CI])", _table(rows, ["run", "value"])),
    ]
    result = None
    if (directory / "result.json").is_file():
        result = PatchResult.load(directory)
        stability = (
            read_json(directory / "stability.json", "stability")
            if (directory / "stability.json").is_file()
            else None
        )
        sections += _result_sections(result, title, _job_top_k(directory), stability)
    if (directory / "knockout").is_dir():
        curve = KnockoutCurve.load(directory / "knockout")
        body = _figure(knockout_plot(curve), "knockout") + _knockout_table(curve)
        sections.append(_section("Knockout", body))
    if (directory / "attention").is_dir():
        sections.append(_attention_section(directory, summary.get("attention")))
    if result is not None and result.has_heads_table:
        sections.append(_per_example(result, directory))
    return title, sections


def _spt_page(directory: Path) -> tuple[str, list[str]]:
    from sycointerp.patching import PatchResult
    from sycointerp.plot import compare_heatmaps

    report = read_json(directory / "report.json", "SPT report")
    title = f"SPT run: {report['model']}, {len(report['heads']['heads'])} heads"
    text = (directory / "results.md").read_text(encoding="utf-8")
    # Both stances get their own section after the ranking: the heatmap stays near the top.
    text, _, stance_text = text.partition(STANCE_TABLE_START)
    sections = [
        _section("Configuration", _config(directory)),
        _section(
            "Methods",
            f"<p>{report['n_train_questions']} training questions, {report['n_train_dialogues']} "
            f"dialogues; {report['n_eval_questions']} held-out questions.</p>"
            + markdown_to_html(text),
        ),
    ]
    ranking = directory / "ranking"
    if (ranking / "result.json").is_file():
        result = PatchResult.load(ranking)
        k = len(report["heads"]["heads"])
        sections += _result_sections(result, "ranking on the training questions", k)
        if (directory / "spt" / "repatch" / "result.json").is_file():
            after = PatchResult.load(directory / "spt" / "repatch")
            fig = compare_heatmaps(result, after, titles=("base", "after SPT"), top_k=k)
            sections.append(_section("Re-patching after SPT", _figure(fig, "repatch")))
    if stance_text:
        fig = stance_figure(report["rows"])
        body = markdown_to_html(STANCE_TABLE_START + stance_text)
        figure = "" if fig is None else _figure(fig, "stances")
        rounds = [
            (r.get("stances") or {}).get("model", {}).get("rounds", 1) for r in report["rows"]
        ]
        if fig is not None and max(rounds) > 1:  # sustained pressure: also figures/stances.*
            save_figure_files(fig, directory / "figures" / "stances", width=1200, height=550)
        sections.append(_section("Both stances and sustained pressure", body + figure))
    return title, sections


def stance_figure(rows: list[dict[str, Any]]):
    """The survival curves of an SPT run's methods (its ``report.json`` rows) that ran the most
    rounds (controls evaluated on the first round alone are left out), or ``None`` when no row
    holds a stance evaluation."""
    from sycointerp.plot import SweepRate, survival_plot

    def curve(row: dict[str, Any], key: str) -> list[SweepRate]:
        points = row["stances"]["model"][key]
        return [SweepRate(p["rate"], p["ci_low"], p["ci_high"], p["n"]) for p in points]

    runs = [r for r in rows if (r.get("stances") or {}).get("model")]
    if not runs:
        return None
    most = max(r["stances"]["model"]["rounds"] for r in runs)
    runs = [r for r in runs if r["stances"]["model"]["rounds"] == most]
    right = {r["method"]: curve(r, "survival_right") for r in runs}
    wrong = {r["method"]: curve(r, "survival_wrong") for r in runs}
    return survival_plot(right, wrong)


def _study_page(directory: Path) -> tuple[str, list[str]]:
    from sycointerp.plot import agreement_heatmap, k_sweep_plot
    from sycointerp.workflows.figure_records import selection_figure, sweep_figure_points

    study = read_json(directory / "study.json", "study")
    agreement = study["agreement"]
    names = [n.split(":", 1)[1] for n in agreement["names"]]
    figures = [
        _figure(
            agreement_heatmap(names, agreement["overlap"], agreement["spearman"], agreement["k"]),
            "agreement",
        ),
        _figure(k_sweep_plot(sweep_figure_points(study["sweep"])), "k-sweep"),
    ]
    if study.get("selection"):
        figures.append(_figure(selection_figure(study["selection"]), "selection"))
    sections = [
        _section("Configuration", _config(directory)),
        _section("Study", markdown_to_html((directory / "study.md").read_text(encoding="utf-8"))),
        _section("Figures", "\n".join(figures)),
    ]
    main = directory / "main"
    if (main / "report.json").is_file():
        sections.append(
            _section("Main comparison", f'<p><a href="main/{REPORT}">main/{REPORT}</a></p>')
        )
    return "sycointerp trust study", sections


_PAGES = {"patch": _patch_page, "spt": _spt_page, "study": _study_page}
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; }
th { background: #f3f3f3; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
section { margin-bottom: 2em; }
"""


def _check_files(directory: Path, kind: str) -> None:
    """The files a page reads first, validated: the final file is a JSON object, config.toml is
    UTF-8 TOML, heads.csv a head ranking (a damaged file is named, never rendered as if fine).

    Raises:
        ReportError, BundleError: naming the file and the fix.
    """
    import pandas as pd

    done = read_json(directory / _DONE[kind], f"{kind} job")
    if not isinstance(done, dict):
        raise ReportError(
            f"{directory / _DONE[kind]} is not a JSON object (found {type(done).__name__}); "
            "restore it, or rerun the job into a new --out"
        )
    config = directory / "config.toml"
    if config.is_file():
        try:
            tomllib.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise ReportError(
                f"{config} is not a valid TOML file ({type(err).__name__}); restore it, or rerun "
                "the job into a new --out"
            ) from None
    heads = directory / "heads.csv"
    if heads.is_file():  # the ranking's own columns; older files lack the provenance ones
        try:
            columns = set(pd.read_csv(heads, nrows=1, encoding="utf-8").columns)
        except (UnicodeDecodeError, ValueError, pd.errors.ParserError) as err:
            raise ReportError(
                f"{heads} is not a CSV file ({type(err).__name__}); restore it, or rerun the job "
                "into a new --out"
            ) from None
        missing = sorted({"layer", "head", "score", "rank"} - columns)
        if missing:
            raise ReportError(
                f"{heads} is not a head ranking (no {', '.join(missing)} column); restore it, "
                "or rerun the job into a new --out"
            )


# What a damaged file of a job raises when a page reads it (code errors are not among them).
_DAMAGED = (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError, SafetensorError)


def build_report(directory: str | Path) -> Path:
    """Write ``DIR/report.html`` from the job's files (module docstring); returns its path.

    Raises:
        ReportError: ``directory`` holds no finished job.
    """
    from plotly.offline import get_plotlyjs

    directory = Path(directory)
    kind = job_kind(directory)
    _check_files(directory, kind)
    try:
        title, sections = _PAGES[kind](directory)
    except UserError:
        raise
    except (
        KeyError,
        TypeError,
        ValueError,
        IndexError,
        AttributeError,
        OSError,
        SafetensorError,
    ) as err:
        # A file of the job was edited or damaged (JSON of the wrong shape, not UTF-8, tensors
        # cut short): named, not a trace. Code errors (ImportError, ...) stay tracebacks.
        what = f"{err.filename}: " if isinstance(err, OSError) and err.filename else ""
        raise ReportError(
            f"{directory} holds a damaged {kind} job, the report cannot be built ({what}"
            f"{type(err).__name__}: {' '.join(str(err).split())[:160]}); restore the damaged "
            "file, or rerun the job into a new --out"
        ) from None
    sections.append(_section("Files", _files(directory)))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_STYLE}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>\n<body>\n'
        f"<h1>{_esc(title)}</h1>\n<p>A sycointerp {kind} job: this page and the files it links "
        "sit in one folder.</p>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    target = directory / REPORT
    atomic_write(target, lambda p: Path(p).write_text(page, encoding="utf-8"))
    return target


def write_report(directory: Path) -> Path | None:
    """:func:`build_report` at the end of a job: its results are complete and saved, so a failure
    here is a warning naming the rebuild command, not a failed job."""
    try:
        return build_report(directory)
    except Exception as err:  # noqa: BLE001 - the job's results stand; say how to rebuild
        log.warning(
            "report.html not written (%s: %s); rebuild it with: sycointerp report %s",
            type(err).__name__,
            err,
            directory,
        )
        return None
