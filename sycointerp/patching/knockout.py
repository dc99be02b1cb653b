"""Head knockout: ablate a set of attention heads (:mod:`~sycointerp.patching.ablation`), then
measure the metric and the apology rate.

Conventions: :func:`knockout_metric` returns the metric *value* under ablation (not a difference),
read at each example's last position of the reference (challenge) prompt; its effect is
``value - baseline``. For metrics with ``higher_is_sycophantic`` (apology metrics) knocking out
sycophancy heads should *lower* the value; for ``flip`` (gold minus wrong logit) it should raise it.
The apology rate is the fraction of greedy replies to the challenge prompt that admit a mistake
(:func:`sycointerp.evaluate.judges.admits_mistake`); higher = more sycophantic.

Verification curve (:func:`knockout_curve`): the top-k heads of a ranking against the same number
of random heads, as in the SPT paper's verification (mean-ablating the top heads drops
Llama-2-13B-Chat's apology rate from 100% to 18%; random heads do far less). Random heads are
drawn uniformly without replacement from all heads (top heads included), independently for each
k and draw (:func:`sycointerp.heads.draw_random_heads`): equal seeds give equal draws.

Generation runs HuggingFace ``generate`` on the bridge's underlying model
(:func:`sycointerp.generate.greedy_generate`). The bridge wraps the HuggingFace modules in place, so
TransformerLens hooks fire there too, at the prefill and at each cached decoding step (tested: the
ablated generation equals an uncached greedy loop of hooked forwards).

Cost: :func:`knockout_metric` is one forward per chunk of ``batch_size`` examples, plus one pass
over the reference prompts for ``"mean"`` (caching only the ablated layers' ``hook_z``) or over the
counterfactual prompts for ``"resample"``. :func:`knockout_curve` runs ``1 + len(ks) * (1 +
n_random)`` such passes at most (equal head sets run once), and as many generation passes with
``generate=True``. Memory: means are ``n_layers x n_heads x d_head`` floats; computing them caches
``hook_z`` for ``batch_size`` prompts at a time.

Refusals (ValueError unless stated): heads out of range or listed twice; unknown method; options
that do not belong to the method; resample with unaligned pairs, in generation or on a run of
another shape (RuntimeError); empty pairs; ``ks`` empty, not increasing or out of range; a ranking
shorter than ``max(ks)``; ``n_random < 1``; ``generate=True`` with pairs that do not end at the
reply; a model in training mode (RuntimeError); hooks that never fired (RuntimeError).
"""

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
import torch
from jaxtyping import Float
from transformer_lens.model_bridge import TransformerBridge

from sycointerp._io import Bundle
from sycointerp.data.batch import PairBatch
from sycointerp.data.pairs import PromptPair, require_aligned
from sycointerp.evaluate.judges import admits_mistake
from sycointerp.generate import greedy_generate
from sycointerp.heads import Head, HeadGrid, draw_random_heads, heads_by_layer, model_meta
from sycointerp.metrics import PatchMetric
from sycointerp.patching._engine import Progress, cell_progress, run_metric
from sycointerp.patching.ablation import (
    METHODS,
    Means,
    Method,
    ablate_heads,
    head_means,
    layer_means,
)

__all__ = ["KnockoutCurve", "knockout_curve", "knockout_metric"]


def _prepare(
    model: TransformerBridge, pairs: Sequence[PromptPair], method: str, batch_size: int
) -> PairBatch:
    """Checks shared by the knockout functions; the pairs as padded tensors."""
    if model.training:
        raise RuntimeError(
            "the model is in training mode; call model.eval() before knocking out heads"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    batch = PairBatch.from_pairs(pairs, model.tokenizer.pad_token_id or 0)
    if method == "resample":
        require_aligned(pairs)
    return batch


def _mean_prompts(
    pairs: Sequence[PromptPair], method: str, reference: Sequence[Sequence[int]] | None
) -> Sequence[Sequence[int]] | None:
    """The prompts the ``"mean"`` is taken over (default: the pairs' reference prompts); None
    otherwise."""
    if method != "mean":
        if reference is not None:
            raise ValueError(f"reference= applies to method='mean' only, got method={method!r}")
        return None
    return [p.ref_ids for p in pairs] if reference is None else reference


def _knockout(
    model: TransformerBridge,
    batch: PairBatch,
    metric: PatchMetric,
    heads: Sequence[Head],
    method: str,
    means: Means | None,
    batch_size: int,
    advance: Callable[[int], None] = lambda examples: None,
) -> torch.Tensor:
    """The metric per example with ``heads`` ablated (``means`` precomputed for ``"mean"``);
    ``advance`` is told each forward's examples."""
    out = []
    for start in range(0, batch.n, batch_size):
        rows = torch.arange(start, min(start + batch_size, batch.n))
        source = batch.cf[rows] if method == "resample" else None
        with ablate_heads(
            model, heads, method=method, means=means if method == "mean" else None, source=source
        ):
            out.append(
                run_metric(
                    model, batch.ref[rows].to(model.cfg.device), batch.ref_last[rows], metric, rows
                )
            )
        advance(len(rows))
    return torch.cat(out).cpu()


def knockout_metric(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    metric: PatchMetric,
    heads: Sequence[Head],
    *,
    method: Method = "mean",
    reference: Sequence[Sequence[int]] | None = None,
    batch_size: int = 16,
) -> Float[torch.Tensor, " example"]:
    """The metric at each example's last reference (challenge) position with ``heads`` ablated.

    Args:
        model: a compat-mode TransformerBridge in eval mode.
        pairs: prompt pairs; the reference prompts run, the counterfactuals feed ``"resample"``.
        metric: a :class:`PatchMetric`.
        heads: ``(layer, head)`` pairs to ablate (none: the unablated metric).
        method: ``"mean"``, ``"zero"`` or ``"resample"``.
        reference: prompts for the ``"mean"`` (default: the pairs' reference prompts).
        batch_size: examples per forward.

    Raises:
        ValueError, RuntimeError: see the module docstring.
    """
    batch = _prepare(model, pairs, method, batch_size)
    prompts = _mean_prompts(pairs, method, reference)
    layers = list(heads_by_layer(heads, HeadGrid.of(model)))
    means = (
        layer_means(model, prompts, layers, batch_size) if prompts is not None and layers else {}
    )
    return _knockout(model, batch, metric, heads, method, means, batch_size)


def _check_ks(ks: Sequence[int], n_ranked: int, total: int) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(b <= a for a, b in zip(ks, ks[1:])):
        raise ValueError(f"ks must be a non-empty increasing sequence, got {list(ks)}")
    if ks[0] < 0 or ks[-1] > total:
        raise ValueError(f"every k must be in [0, {total}] (the model's heads), got {list(ks)}")
    if ks[-1] > n_ranked:
        raise ValueError(f"the ranking has {n_ranked} heads, fewer than max(ks) = {ks[-1]}")
    return ks


def _apology(
    model: TransformerBridge,
    prompts: list[tuple[int, ...]],
    heads: Sequence[Head],
    method: str,
    means: Means | None,
    max_new_tokens: int,
    batch_size: int,
    advance: Callable[[int], None],
) -> torch.Tensor:
    """1.0 per greedy reply (with ``heads`` ablated) that admits a mistake, else 0.0; ``advance``
    is told the replies."""
    with ablate_heads(model, heads, method=method, means=means if method == "mean" else None):
        replies = greedy_generate(
            model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
    advance(len(replies))
    return torch.tensor([float(admits_mistake(r)) for r in replies])


def _head_sets(
    top_heads: Sequence[Head], ks: Sequence[int], random_heads: Sequence[Sequence[Sequence[Head]]]
) -> dict[frozenset[Head], Sequence[Head]]:
    """The distinct head sets a curve measures, in the order they run, each with the first
    listing of it: equal sets give equal values (k = 0, k = all heads, coinciding draws), so each
    runs once."""
    sets: dict[frozenset[Head], Sequence[Head]] = {}
    for heads in [*(top_heads[:k] for k in ks), *(d for draws in random_heads for d in draws), ()]:
        sets.setdefault(frozenset(heads), heads)
    return sets


def knockout_curve(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    metric: PatchMetric,
    ranking: Sequence[Head],
    ks: Sequence[int],
    *,
    method: Method = "mean",
    reference: Sequence[Sequence[int]] | None = None,
    means: Float[torch.Tensor, "layer head d_head"] | None = None,
    n_random: int = 5,
    seed: int = 0,
    generate: bool = False,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    progress: Progress = False,
) -> "KnockoutCurve":
    """The metric (and apology rate) with the top-k ranked heads vs k random heads ablated.

    Args:
        model: a compat-mode TransformerBridge in eval mode.
        pairs: prompt pairs (``position="reply"`` ones for ``generate=True``).
        metric: a :class:`PatchMetric`.
        ranking: heads, most important first (e.g. ``PatchResult.rank()``).
        ks: increasing numbers of heads to ablate (0 gives the unablated run).
        method: ``"mean"`` (the paper's), ``"zero"`` or ``"resample"`` (not with ``generate``).
        reference: prompts for the ``"mean"`` (default: the pairs' reference prompts).
        means: precomputed ``"mean"`` values (:func:`head_means`), e.g. over a whole dataset when
            ``pairs`` is one chunk of it; exclusive with ``reference``.
        n_random: random head sets per k.
        seed: seed of the random draws.
        generate: also measure the apology rate of greedy replies to the challenge prompts.
        max_new_tokens: reply length when generating.
        batch_size: examples per forward (and per generation batch).
        progress: ``True`` shows a bar counting ablated cells, one per (distinct head set,
            example), twice with ``generate`` (the metric, then the replies), with the rate and
            the time left; a callable gets the counts instead (see ``_engine.Progress``). Results
            are the same.

    Raises:
        ValueError, RuntimeError: see the module docstring.
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    ks = _check_ks(ks, len(ranking), L * H)
    top_heads = tuple((int(l), int(h)) for l, h in ranking[: ks[-1]])
    heads_by_layer(top_heads, HeadGrid.of(model))
    random_heads = draw_random_heads(L, H, ks, n_random, seed)
    if generate and method == "resample":
        raise ValueError(
            "resample ablation cannot run during generation; use method='mean' or 'zero'"
        )
    if generate and any(p.position != "reply" for p in pairs):
        raise ValueError(
            "the apology rate needs pairs built with position='reply' (prompts ending at the reply)"
        )
    batch = _prepare(model, pairs, method, batch_size)
    if means is not None:
        if method != "mean" or reference is not None:
            raise ValueError("means= applies to method='mean' without reference=")
        if tuple(means.shape[:2]) != (L, H):
            raise ValueError(
                f"means must be [layer={L}, head={H}, d_head], got {tuple(means.shape)}"
            )
    else:
        prompts = _mean_prompts(pairs, method, reference)
        means = head_means(model, prompts, batch_size=batch_size) if prompts is not None else None

    sets = _head_sets(top_heads, ks, random_heads)

    def curve(run) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        done = {key: run(heads) for key, heads in sets.items()}

        def measured(heads: Sequence[Head]) -> torch.Tensor:
            return done[frozenset(heads)]

        top = torch.stack([measured(top_heads[:k]) for k in ks])
        rand = torch.stack([torch.stack([measured(d) for d in draws]) for draws in random_heads])
        return measured(()), top, rand

    cells = len(sets) * batch.n * (2 if generate else 1)
    with cell_progress(progress, cells, f"knockout/{method}") as advance:
        base, top, rand = curve(
            lambda heads: _knockout(model, batch, metric, heads, method, means, batch_size, advance)
        )
        apology: tuple[torch.Tensor | None, ...] = (None, None, None)
        if generate:
            prompts = [p.ref_ids for p in pairs]
            apology = curve(
                lambda heads: _apology(
                    model, prompts, heads, method, means, max_new_tokens, batch_size, advance
                )
            )
    return KnockoutCurve(
        ks,
        base,
        top,
        rand,
        top_heads,
        random_heads,
        method,
        metric.name,
        metric.higher_is_sycophantic,
        L,
        H,
        seed,
        *apology,
        example_ids=batch.ids,
        meta={
            **model_meta(model),
            "max_new_tokens": max_new_tokens if generate else None,
        },
    )


def _heads_json(heads: Sequence[Head]) -> list[list[int]]:
    return [[int(l), int(h)] for l, h in heads]


def _heads_tuple(heads: Sequence[Sequence[int]]) -> tuple[Head, ...]:
    return tuple((int(l), int(h)) for l, h in heads)


# KnockoutCurve.summary()'s columns, in order.
SUMMARY_COLUMNS = [
    "measure",
    "k",
    "baseline",
    "top",
    "top_ci_low",
    "top_ci_high",
    "random_mean",
    "random_std",
    "random_min",
    "random_max",
    "top_minus_random",
    "diff_ci_low",
    "diff_ci_high",
]


@dataclass(frozen=True, eq=False)
class KnockoutCurve(Bundle):
    """Per-example metric values (and apology flags) with the top-k vs k random heads ablated.

    Attributes:
        ks: the numbers of heads ablated, increasing.
        baseline: ``[example]`` metric of the unablated model.
        top: ``[k, example]`` metric with the first ``ks[i]`` heads of the ranking ablated.
        random: ``[k, draw, example]`` metric with ``random_heads[i][draw]`` ablated.
        top_heads: the ranking's first ``max(ks)`` heads.
        random_heads: ``[k][draw]`` the random head sets (sorted).
        method: ablation method.
        metric: metric name.
        higher_is_sycophantic: direction of the metric.
        n_layers, n_heads: the model's head grid.
        seed: seed of the random draws.
        apology_baseline, apology_top, apology_random: as ``baseline``/``top``/``random`` but 1.0
            where the greedy reply admits a mistake, else 0.0 (means are apology rates); ``None``
            without generation.
        example_ids: one id per example.
        meta: JSON-serializable extras.
    """

    ks: tuple[int, ...]
    baseline: Float[torch.Tensor, " example"]
    top: Float[torch.Tensor, "k example"]
    random: Float[torch.Tensor, "k draw example"]
    top_heads: tuple[Head, ...]
    random_heads: tuple[tuple[tuple[Head, ...], ...], ...]
    method: str
    metric: str
    higher_is_sycophantic: bool
    n_layers: int
    n_heads: int
    seed: int
    apology_baseline: Float[torch.Tensor, " example"] | None = None
    apology_top: Float[torch.Tensor, "k example"] | None = None
    apology_random: Float[torch.Tensor, "k draw example"] | None = None
    example_ids: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    TENSORS: ClassVar[str] = "curve.safetensors"
    INFO: ClassVar[str] = "curve.json"

    def __post_init__(self) -> None:
        K, (N,) = len(self.ks), self.baseline.shape
        if K == 0 or N == 0:
            raise ValueError("a KnockoutCurve needs at least one k and one example")
        if (
            list(self.ks) != sorted(set(self.ks))
            or self.ks[0] < 0
            or self.ks[-1] > self.n_layers * self.n_heads
        ):
            raise ValueError(
                f"ks must increase within [0, {self.n_layers * self.n_heads}], got {list(self.ks)}"
            )
        if self.top.shape != (K, N) or self.random.ndim != 3 or self.random.shape[::2] != (K, N):
            raise ValueError(
                f"top must be [k={K}, example={N}] and random [k, draw, example], got "
                f"{tuple(self.top.shape)} and {tuple(self.random.shape)}"
            )
        draws = self.random.shape[1]
        if (
            draws < 1
            or len(self.random_heads) != K
            or any(
                len(per_k) != draws or any(len(d) != k for d in per_k)
                for k, per_k in zip(self.ks, self.random_heads)
            )
        ):
            raise ValueError(f"random_heads must hold, for each k, {draws} draws of k heads")
        if len(self.top_heads) < self.ks[-1]:
            raise ValueError(
                f"top_heads has {len(self.top_heads)} heads, fewer than max(ks) = {self.ks[-1]}"
            )
        apology = (self.apology_baseline, self.apology_top, self.apology_random)
        if any(a is not None for a in apology) and any(
            a is None or a.shape != m.shape
            for a, m in zip(apology, (self.baseline, self.top, self.random))
        ):
            raise ValueError(
                "the apology tensors must be all absent or all shaped like baseline, top and random"
            )
        if any(torch.isnan(t).any() for t in (self.baseline, self.top, self.random)):
            raise ValueError("NaN metric value in the knockout curve; check the metric")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.example_ids and len(self.example_ids) != N:
            raise ValueError(f"{len(self.example_ids)} example ids for {N} examples")

    @property
    def n_random(self) -> int:
        """Random head sets drawn per k."""
        return self.random.shape[1]

    @property
    def has_apology(self) -> bool:
        """Whether the curve holds generated apology rates (``generate=True``)."""
        return self.apology_top is not None

    def _measures(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        out = {"metric": (self.baseline, self.top, self.random)}
        if self.has_apology:
            out["apology"] = (self.apology_baseline, self.apology_top, self.apology_random)
        return out

    def summary(self) -> pd.DataFrame:
        """One row per (measure, k); ``measure`` is ``"metric"`` or ``"apology"`` (rates).

        Columns: ``baseline``; ``top`` with ``top_ci_low`` / ``top_ci_high`` (95% percentile
        bootstrap over examples); ``random_mean``, ``random_std`` (std over draws of the per-draw
        mean; NaN with one draw) and ``random_min`` / ``random_max`` (the draws' range);
        ``top_minus_random`` with ``diff_ci_low`` / ``diff_ci_high``: per example, top-k minus
        the draws' mean, bootstrapped over examples (paired: the same examples on both sides).
        """
        from sycointerp.stats import bootstrap_ci

        rows = []
        for measure, (base, top, rand) in self._measures().items():
            per_draw = rand.double().mean(-1)  # [k, draw]
            std = (
                per_draw.std(-1) if self.n_random > 1 else torch.full((len(self.ks),), float("nan"))
            )
            top_low, top_high = bootstrap_ci(top)
            diff = top.double() - rand.double().mean(1)  # [k, example]
            diff_low, diff_high = bootstrap_ci(diff)
            for i, k in enumerate(self.ks):
                rows.append(
                    {
                        "measure": measure,
                        "k": k,
                        "baseline": float(base.double().mean()),
                        "top": float(top[i].double().mean()),
                        "top_ci_low": float(top_low[i]),
                        "top_ci_high": float(top_high[i]),
                        "random_mean": float(per_draw[i].mean()),
                        "random_std": float(std[i]),
                        "random_min": float(per_draw[i].min()),
                        "random_max": float(per_draw[i].max()),
                        "top_minus_random": float(diff[i].mean()),
                        "diff_ci_low": float(diff_low[i]),
                        "diff_ci_high": float(diff_high[i]),
                    }
                )
        return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)

    def to_dataframe(self) -> pd.DataFrame:
        """Long format: measure, k, kind (``"baseline"`` at k=0, ``"top"``, ``"random"``), draw,
        example, value."""
        frames = []
        for measure, (base, top, rand) in self._measures().items():
            K, D, N = rand.shape
            parts = [
                (
                    "baseline",
                    torch.zeros(N, dtype=torch.long),
                    torch.zeros(N, dtype=torch.long),
                    torch.arange(N),
                    base,
                )
            ]
            grid = torch.cartesian_prod(torch.arange(K), torch.arange(N))
            parts.append(
                (
                    "top",
                    grid[:, 0],
                    torch.zeros(len(grid), dtype=torch.long),
                    grid[:, 1],
                    top.flatten(),
                )
            )
            grid = torch.cartesian_prod(torch.arange(K), torch.arange(D), torch.arange(N))
            parts.append(("random", grid[:, 0], grid[:, 1], grid[:, 2], rand.flatten()))
            ks = torch.tensor(self.ks)
            for kind, k_idx, draw, example, value in parts:
                k = torch.zeros_like(k_idx) if kind == "baseline" else ks[k_idx]
                frames.append(
                    pd.DataFrame(
                        {
                            "measure": measure,
                            "k": k.numpy(),
                            "kind": kind,
                            "draw": draw.numpy(),
                            "example": example.numpy(),
                            "value": value.double().numpy(),
                        }
                    )
                )
        return pd.concat(frames, ignore_index=True)

    def to_bundle(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The tensors and the JSON-serializable rest (what :meth:`save` writes)."""
        tensors = {"baseline": self.baseline, "top": self.top, "random": self.random}
        if self.has_apology:
            tensors.update(
                apology_baseline=self.apology_baseline,
                apology_top=self.apology_top,
                apology_random=self.apology_random,
            )
        info = {
            "ks": list(self.ks),
            "top_heads": _heads_json(self.top_heads),
            "random_heads": [[_heads_json(d) for d in per_k] for per_k in self.random_heads],
            "method": self.method,
            "metric": self.metric,
            "higher_is_sycophantic": self.higher_is_sycophantic,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "seed": self.seed,
            "example_ids": list(self.example_ids),
            "meta": self.meta,
        }
        return tensors, info

    @classmethod
    def from_bundle(cls, t: dict[str, torch.Tensor], info: dict[str, Any]) -> "KnockoutCurve":
        """Inverse of :meth:`to_bundle`."""
        random_heads = tuple(
            tuple(_heads_tuple(d) for d in per_k) for per_k in info["random_heads"]
        )
        return cls(
            tuple(info["ks"]),
            t["baseline"],
            t["top"],
            t["random"],
            _heads_tuple(info["top_heads"]),
            random_heads,
            info["method"],
            info["metric"],
            info["higher_is_sycophantic"],
            info["n_layers"],
            info["n_heads"],
            info["seed"],
            t.get("apology_baseline"),
            t.get("apology_top"),
            t.get("apology_random"),
            tuple(info["example_ids"]),
            info["meta"],
        )

    @classmethod
    def concat(cls, curves: Sequence["KnockoutCurve"]) -> "KnockoutCurve":
        """One curve over the examples of several (e.g. chunks of one dataset), in order.

        Raises:
            ValueError: no curves, or curves of different ks, head sets, method, metric or model.
        """
        if not curves:
            raise ValueError("concat needs at least one KnockoutCurve")
        first = curves[0]
        same = (
            "ks",
            "top_heads",
            "random_heads",
            "method",
            "metric",
            "higher_is_sycophantic",
            "n_layers",
            "n_heads",
            "seed",
        )
        for other in curves[1:]:
            if (
                any(getattr(other, name) != getattr(first, name) for name in same)
                or other.has_apology != first.has_apology
            ):
                raise ValueError(
                    "curves to concatenate must share ks, head sets, method, metric, model and seed"
                )

        def cat(name: str) -> torch.Tensor | None:
            parts = [getattr(c, name) for c in curves]
            return None if parts[0] is None else torch.cat(parts, -1)

        return dataclasses.replace(
            first,
            baseline=cat("baseline"),
            top=cat("top"),
            random=cat("random"),
            apology_baseline=cat("apology_baseline"),
            apology_top=cat("apology_top"),
            apology_random=cat("apology_random"),
            example_ids=tuple(i for c in curves for i in c.example_ids),
        )
