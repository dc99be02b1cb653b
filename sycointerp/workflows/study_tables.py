"""The trust study's report: ``study.md`` (every table, with intervals) and ``figures/`` (rank
intervals of the main ranking, agreement of the rankings, the K sweep).

Rates are in %, with Wilson 95% intervals; paired differences in points with paired bootstrap
intervals and exact McNemar (one draw) or sign-flip (draws pooled per item) p-values. Spreads
over paraphrase pairs and over random draws are ranges (min to max), not confidence intervals.
"""

from pathlib import Path
from typing import Any

from sycointerp._io import atomic_write
from sycointerp.evaluate.capability import kl_text
from sycointerp.workflows.output import save_figure_files
from sycointerp.workflows.study_config import StudyConfig

__all__ = ["write_study_md"]


def _pct(p: dict[str, Any] | None) -> str:
    if not p or p.get("rate") is None:
        return "n/a" if not p else f"n/a (n={p.get('n', 0)})"
    flag = ", few items" if p.get("small") else ""
    return (
        f"{100 * p['rate']:.1f} [{100 * p['ci_low']:.1f}, {100 * p['ci_high']:.1f}] "
        f"({p['k']}/{p['n']}{flag})"
    )


def _diff(d: dict[str, Any] | None) -> str:
    if not d or d.get("diff") is None:
        return "n/a"
    test = "McNemar" if "b" in d else "sign-flip"
    return (
        f"{100 * d['diff']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}], "
        f"{test} p = {d['p_value']:.3g} (n={d['n']})"
    )


def _protocols(record: dict[str, Any]) -> list[str]:
    lines = [
        "## 1. Evaluation protocols on the base model",
        "",
        f"{record['n_questions']} held-out questions of the main split (ARC: its own items). "
        "Flip rate: initially-correct items whose final answer is no longer correct.",
        "",
        "| protocol | accuracy before | Confidence | Truthfulness | flip rate | Truthfulness vs "
        "stem (paired) |",
        "|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        vs = r.get("vs_stem", {}).get("truthfulness")
        lines.append(
            f"| {r['protocol']} | {_pct(r['accuracy_before'])} | {_pct(r['confidence'])} | "
            f"{_pct(r['truthfulness'])} | {_pct(r['flip_rate'])} | {_diff(vs)} |"
        )
    lines += ["", f"Chosen: **{record['chosen']}** ({record['why']}).", ""]
    if "held_out" in record:
        held = record["held_out"]
        lines += [
            f"First answers on all {held['n']} held-out questions (no challenge): "
            f"{held['correct']['k']} correct, {_pct(held['correct'])}.",
            "",
        ]
    return lines


def _stability(out: Path, config: StudyConfig) -> tuple[list[str], dict[str, Any]]:
    from sycointerp.patching import PatchResult
    from sycointerp.plot import rank_intervals_plot

    result = PatchResult.load(out / "main" / "ranking")
    table = result.heads_table().head(10)
    half = result.split_half(k=min(10, result.values[..., 0].numel()))
    save_figure_files(rank_intervals_plot(result, k=20), out / "figures" / "rank_intervals")
    lines = [
        "## 2. Stability of the main ranking",
        "",
        f"Path patching on {result.values.shape[-1]} training pairs of the main split; rank "
        "intervals from 1000 bootstrap resamples of the pairs; split-half: Spearman of the "
        "rankings of two disjoint halves over 50 splits (2.5-97.5% range over splits).",
        "",
        "| rank | head | score [95% CI] | rank interval | P(top 10) |",
        "|---|---|---|---|---|",
    ]
    rows = []
    for _, r in table.iterrows():
        head = f"{int(r['layer'])}.{int(r['head'])}"
        lines.append(
            f"| {int(r['rank'])} | {head} | {r['score']:.3f} [{r['ci_low']:.3f}, "
            f"{r['ci_high']:.3f}] | [{int(r['rank_ci_low'])}, {int(r['rank_ci_high'])}] | "
            f"{r['p_top10']:.2f} |"
        )
        rows.append({"head": head, **{k: float(r[k]) for k in ("score", "ci_low", "ci_high")}})
        rows[-1].update({k: int(r[k]) for k in ("rank", "rank_ci_low", "rank_ci_high")})
        rows[-1]["p_top10"] = float(r["p_top10"])
    lines += [
        "",
        f"Split-half Spearman {half.mean:.3f} [{half.low:.3f}, {half.high:.3f}], top-10 overlap "
        f"{half.top_k_overlap:.2f}.",
        "",
    ]
    return lines, {"top": rows, "split_half": half.to_json()}


def _agreement(record: dict[str, Any], out: Path) -> list[str]:
    from sycointerp.plot import agreement_heatmap

    names = [n.split(":", 1)[1] for n in record["names"]]
    fig = agreement_heatmap(names, record["overlap"], record["spearman"], record["k"])
    save_figure_files(fig, out / "figures" / "agreement", width=1400, height=650)
    para = record["paraphrases"]
    lines = [
        "## 3. Agreement across challenge paraphrases and metrics",
        "",
        f"Path patching of {record['n_pairs']} training questions under each of the "
        f"{sum(n.startswith('challenge:') for n in record['names'])} challenge paraphrases "
        "(apology logit difference) and under two other metrics. Over the pairs of paraphrases "
        "(mean, and min to max):",
        "",
        f"- top-{record['k']} overlap {para['overlap']['mean']:.2f} "
        f"({para['overlap']['min']:.2f} to {para['overlap']['max']:.2f});",
        f"- Spearman {para['spearman']['mean']:.2f} "
        f"({para['spearman']['min']:.2f} to {para['spearman']['max']:.2f}).",
        "",
        "Other metrics against the paper's challenge with the apology logit difference:",
        "",
    ]
    for name, values in record["metrics_vs_paper"].items():
        lines.append(
            f"- {name.split(':', 1)[1]}: top-{record['k']} overlap {values['overlap']:.2f}, "
            f"Spearman {values['spearman']:.2f}"
        )
    return lines + [""]


def _repatch(main: dict[str, Any]) -> list[str]:
    spt = next((r for r in main["rows"] if r["method"] == "spt"), None)
    if not spt or "repatch" not in spt:
        return []
    rep = spt["repatch"]
    m = rep["mean_change"]
    lines = [
        "## 5. Re-patching after SPT",
        "",
        f"Path patching of the tuned model on the ranking's {rep['n_pairs']} pairs. Mean change "
        f"of the selected heads' effect: {m['mean']:+.3f} [{m['ci_low']:+.3f}, "
        f"{m['ci_high']:+.3f}] (paired bootstrap over pairs).",
        "",
        "| head | before | after | change [95% CI] |",
        "|---|---|---|---|",
    ]
    for h in rep["heads"]:
        c = h["change"]
        lines.append(
            f"| {h['layer']}.{h['head']} | {h['before']:.3f} | {h['after']:.3f} | "
            f"{c['mean']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] |"
        )
    return lines + [""]


def _sweep(rows: list[dict[str, Any]], out: Path) -> list[str]:
    from sycointerp.plot import k_sweep_plot
    from sycointerp.workflows.figure_records import sweep_figure_points

    save_figure_files(
        k_sweep_plot(sweep_figure_points(rows)), out / "figures" / "k_sweep", width=1300, height=550
    )
    lines = [
        "## 6. The K sweep: top K against layer-matched random heads",
        "",
        "Each point is evaluated on the same held-out questions (a prefix of the main ones); "
        "random: the draws' mean and range; pooled: SPT minus the draws' mean, per item.",
        "",
        "| split | K | SPT Confidence | random Confidence mean (range) | SPT - random, pooled | "
        "SPT Truthfulness | SPT - random Truthfulness, pooled | KL SPT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, t = r["confidence"], r["truthfulness"]
        kl = kl_text(r["kl"]["spt"], r["kl"].get("spt_ci")) if "kl" in r else "-"
        lines.append(
            f"| {r['split']} | {r['k']} | {_pct(c['spt'])} | {_spread(c['draws'])} | "
            f"{_diff(c['pooled'])} | "
            f"{_pct(t['spt'])} | {_diff(t['pooled'])} | {kl} |"
        )
    bases = {r["split"]: r.get("base", {}) for r in rows}
    lines += [""] + [
        f"Base on split {s}: Confidence {_pct(b.get('confidence'))}, Truthfulness "
        f"{_pct(b.get('truthfulness'))}."
        for s, b in bases.items()
    ]
    return lines + [""]


def _selection(selection: dict[str, Any] | None, out: Path) -> list[str]:
    """Section 7: every recipe against its matched controls, with the detectable difference."""
    if not selection:
        return []
    from sycointerp.workflows.figure_records import selection_figure

    save_figure_files(
        selection_figure(selection), out / "figures" / "selection", width=1300, height=550
    )
    lines = [
        "## 7. Which heads to tune: selection recipes against matched random heads",
        "",
        *_power(selection["power"]),
        "Each recipe's SPT on its top K, on the main comparison's items, minus random heads "
        f"pooled per item ({selection['draws']} layer-matched draws of the recipe's own layer "
        "histogram; the main comparison's uniform draws, shared); against the paper's recipe "
        "paired (McNemar; in brackets after it, the difference that comparison could detect). "
        "Correction and discrimination: round 1 of the both-stances evaluation.",
        "",
        "| recipe | overlap with paper's top K | Confidence | Truthfulness | corrects own wrong "
        "| discrimination | Confidence - layer-matched | Confidence - uniform | "
        "Truthfulness - layer-matched | Truthfulness - uniform | Truthfulness - paper's |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in selection["recipes"]:
        layer, uniform = r["vs_layer_matched"], r["vs_uniform"]
        lines.append(
            f"| {r['name']} | {r['overlap_with_paper']:.2f} | {_pct(r['confidence'])} | "
            f"{_pct(r['truthfulness'])} | {_pct(r.get('correction_rate'))} | "
            f"{_score(r.get('discrimination'))} | {_diff(layer['confidence'])} | "
            f"{_diff(uniform['confidence'])} | {_diff(layer['truthfulness'])} | "
            f"{_diff(uniform['truthfulness'])} | {_paired(r, 'truthfulness')} |"
        )
    lines += ["", "![selection recipes against random heads](figures/selection.png)", ""]
    return lines + _pairwise(selection.get("pairwise", []))


def _paired(row: dict[str, Any], measure: str) -> str:
    """A recipe against the paper's, with the difference that comparison could detect."""
    versus = (row.get("vs_paper") or {}).get(measure)
    if not versus:
        return "-"
    detectable = versus.get("detectable")
    return _diff(versus) + ("" if detectable is None else f" (detects {100 * detectable:.0f})")


def _pairwise(pairs: list[dict[str, Any]]) -> list[str]:
    """Every pair of recipes' SPT runs, paired by item."""
    if not pairs:
        return []
    lines = [
        "Recipes against each other (SPT runs paired by item, McNemar; uncorrected for the "
        f"{len(pairs)} comparisons; in brackets, the difference each could detect):",
        "",
        "| A - B | Confidence | Truthfulness |",
        "|---|---|---|",
    ]
    for cmp in pairs:
        cells = [_paired({"vs_paper": cmp}, m) for m in ("confidence", "truthfulness")]
        lines.append(f"| {cmp['a']} - {cmp['b']} | {cells[0]} | {cells[1]} |")
    return lines + [""]


def _power(power: dict[str, Any]) -> list[str]:
    """The detectable differences with what they rest on, or why there are none."""
    parts = []
    for measure, found in power.items():
        rests = f"{found['items']} items, {found['observed_draws']} draws observed"
        if "difference" not in found:
            parts.append(f"{measure}: not estimable ({found['reason']}; {rests})")
            continue
        flags = ", few items: a rough plan" if found.get("small") else ""
        flags += ", at the floor of its item count" if found.get("floored") else ""
        parts.append(
            f"{measure} {100 * found['difference']:.1f} points for {found['draws']} draws "
            f"(sd {found['sd']:.2f} per item; {rests}{flags}); 10 points would need "
            f"{found['items_for_10_points']} initially-correct items, about "
            f"{found['questions_for_10_points']} held-out questions"
        )
    if not parts:
        return []
    return [
        "Detectable with 80% power at alpha 0.05, planned from the main comparison's SPT against "
        "its layer-matched draws pooled per item (the grey band of the figure): "
        + "; ".join(parts)
        + ". A difference smaller than these could be missed: a null below it is not evidence "
        "of no effect. More draws can only shrink the set of items initially correct under "
        "every draw, so the items needed are a lower bound.",
        "",
    ]


def _score(d: dict[str, Any] | None) -> str:
    """A rate difference (discrimination) in points with its interval."""
    if not d or d.get("diff") is None:
        return "n/a"
    return f"{100 * d['diff']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"


def _spread(rates: list[float | None]) -> str:
    """Mean (min to max) of the draws' rates in %; the draws without items left out."""
    known = [100 * r for r in rates if r is not None]
    if not known:
        return "n/a"
    return f"{sum(known) / len(known):.1f} ({min(known):.1f} to {max(known):.1f})"


def _stance_figure(main: dict[str, Any], out: Path) -> list[str]:
    """``figures/stances``: the main comparison's survival curves under sustained pressure."""
    from sycointerp.workflows.report import stance_figure

    fig = stance_figure(main["rows"])
    if fig is None:
        return []
    save_figure_files(fig, out / "figures" / "stances", width=1200, height=550)
    return [
        "",
        "![Share still right, and not yet corrected, after each round of push-back]"
        "(figures/stances.png)",
        "",
    ]


def _timings(seconds: dict[str, float]) -> list[str]:
    if not seconds:
        return []
    parts = ", ".join(f"{stage} {s / 60:.0f} min" for stage, s in seconds.items())
    total = sum(seconds.values()) / 60
    return [f"Time (wall clock, summed over resumed runs): {total:.0f} min ({parts}).", ""]


def write_study_md(config: StudyConfig, out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``study.md`` and ``figures/`` from the stages' ``record``; returns the ranking
    stability summary (for ``study.json``)."""
    stability_lines, stability = _stability(out, config)
    main_table = (out / "main" / "results.md").read_text(encoding="utf-8")
    lines = [
        "# sycointerp trust study",
        "",
        f"Model: {config.model or 'embedded SmolLM2-135M-Instruct'}; main split seed "
        f"{config.seed}, K = {config.top_k}, {config.draws} draws per control; sweep K = "
        f"{config.ks} on splits {config.splits}, {config.sweep_draws} layer-matched draws, "
        f"{config.sweep_eval_limit} questions per point; {config.steps} steps of "
        f"{config.batch_size} dialogues, lr {config.lr}.",
        "",
        *_timings(record.get("seconds", {})),
        *_protocols(record["protocols"]),
        *stability_lines,
        *_agreement(record["agreement"], out),
        "## 4. SPT against base, SFT and three kinds of random heads",
        "",
        main_table,
        *_stance_figure(record["main"], out),
        *_repatch(record["main"]),
        *_sweep(record["sweep"], out),
        *_selection(record.get("selection"), out),
    ]
    text = "\n".join(lines)
    atomic_write(out / "study.md", lambda p: Path(p).write_text(text, encoding="utf-8"))
    return stability
