"""Attribution patching of attention-head outputs (``hook_z``): a gradient estimate of activation
patching.

Estimate (Nanda's attribution patching): patching head ``(l, h)`` from the source run into the
base run changes the metric by about ``sum((z_src - z_base) * d metric / d z)`` with the gradient
taken at the base run, summed over ``d_head`` and over the patched positions: the last one for
``position="last"`` (each prompt's own last position; pairs may differ in length), every real
position for ``position="all"`` (aligned pairs only). It is exact where the metric is linear in
that head's output; the final norm and every later layer make it an approximation, so rankings
should be checked against :func:`~sycointerp.patching.activation.patch_head_outputs`
(``verify_top_k``).

Sign and direction follow :mod:`~sycointerp.patching.activation`: ``values`` estimate
``metric(patched) - metric(base run)`` per example (``kind="absolute"``); ``"denoise"`` runs the
reference (challenge) prompt and patches in the counterfactual, ``"noise"`` the reverse.

Integrated gradients (``ig_steps = n > 0``, EAP-IG style): the residual stream entering block 0
(``blocks.0.hook_resid_pre``: token plus position embeddings) is interpolated as
``x_base + a * (x_src - x_base)`` at the midpoints ``a = (k + 0.5) / n``, ``k = 0..n-1``; the
gradients w.r.t. every ``hook_z`` are averaged over the ``n`` runs and multiplied by
``z_src - z_base``. Interpolating position by position needs aligned pairs, for either position.

Gradients are taken w.r.t. activations only (``torch.autograd.grad``): the parameters are frozen
(``requires_grad=False``) during the call and restored afterwards, and nothing is written to any
``.grad``. Each example's metric only depends on its own row, so the gradient of the summed metric
is every example's own gradient.

Cost per batch of ``batch_size`` examples: one no-grad forward of the source, one forward with
grad of the base and one backward (activation gradients only, about a forward's work): about 3
forward-equivalents per batch, baselines included (``metric_ref``/``metric_cf`` are read from these
same runs). With ``ig_steps = n``: two no-grad forwards plus ``n`` forwards and ``n`` backwards.
Memory: the base run's autograd graph (``rows x pos x d_vocab`` logits included) plus ``hook_z``
of every layer three times (source, base, gradient; ``rows x pos x n_heads x d_head`` floats per
layer). ``verify_top_k = k`` adds one cached source run (all examples at once, as in
``patch_head_outputs``) and ``k * n_examples`` patched rows, ``batch_size`` rows per forward.

Refusals: training mode, ``torch.inference_mode`` (no gradients), empty pairs, misaligned pairs
with ``position="all"`` or ``ig_steps > 0``, unknown options, ``verify_top_k`` outside
``[0, n_layers * n_heads]``, NaN metric.
"""

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from jaxtyping import Float, Int
from transformer_lens.model_bridge import TransformerBridge

from sycointerp.data.batch import PairBatch
from sycointerp.data.pairs import PromptPair, require_aligned
from sycointerp.metrics import PatchMetric
from sycointerp.patching._engine import Progress, cell_progress, z_name
from sycointerp.patching.activation import patch_head_list
from sycointerp.patching.results import PatchResult
from sycointerp.stability import spearman

__all__ = ["attribution_patch_heads"]

Direction = Literal["denoise", "noise"]
Where = Literal["last", "all"]
RESID_IN = "blocks.0.hook_resid_pre"


@contextmanager
def _activation_gradients_only(model: TransformerBridge) -> Iterator[None]:
    """Freeze the parameters (so the graph holds activations only) and enable grad; restores
    both."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _last_metric(
    logits: torch.Tensor, last: torch.Tensor, metric: PatchMetric, example: torch.Tensor
) -> torch.Tensor:
    return metric(logits[torch.arange(logits.shape[0]), last].float(), example)


@torch.no_grad()
def _cached_run(
    model: TransformerBridge,
    ids: torch.Tensor,
    last: torch.Tensor,
    metric: PatchMetric,
    example: torch.Tensor,
    names: Sequence[str],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Metric and the activations ``names`` of one no-grad forward (no_grad, not inference_mode:
    the cached residual feeds the graph of the interpolated runs)."""
    wanted = set(names)
    logits, cache = model.run_with_cache(ids, names_filter=lambda n: n in wanted)
    missing = wanted - set(cache.keys())
    if missing:
        raise RuntimeError(
            f"hooks not found in the model: {sorted(missing)[:3]}; "
            "is it a compat-mode TransformerBridge?"
        )
    return _last_metric(logits, last, metric, example), {n: cache[n] for n in names}


def _gradient_run(
    model: TransformerBridge,
    ids: torch.Tensor,
    last: torch.Tensor,
    metric: PatchMetric,
    example: torch.Tensor,
    resid_in: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """One forward + backward: (metric, ``hook_z`` of every layer, d summed metric / d each
    ``hook_z``).

    Block 0's input residual (``resid_in`` if given, else the prompt's own) is the graph's only
    leaf that requires grad. Call inside ``_activation_gradients_only``.
    """
    zs: list[torch.Tensor] = []

    def leaf(x: torch.Tensor, hook=None) -> torch.Tensor:
        return (x if resid_in is None else resid_in).detach().requires_grad_(True)

    def capture(z: torch.Tensor, hook=None) -> torch.Tensor:
        zs.append(z)
        return z  # returned, not None: the bridge only routes a hook's return value into the graph

    n_layers = model.cfg.n_layers
    logits = model.run_with_hooks(
        ids, fwd_hooks=[(RESID_IN, leaf)] + [(z_name(l), capture) for l in range(n_layers)]
    )
    if len(zs) != n_layers:
        raise RuntimeError(
            f"{len(zs)} of {n_layers} hook_z hooks fired; is the model a compat-mode "
            "TransformerBridge?"
        )
    values = _last_metric(logits, last, metric, example)
    grads = torch.autograd.grad(values.sum(), zs)
    return values.detach(), [z.detach() for z in zs], list(grads)


def _head_dot(
    z_src: Float[torch.Tensor, "ex pos_src head d_head"],
    z_base: Float[torch.Tensor, "ex pos head d_head"],
    grad: Float[torch.Tensor, "ex pos head d_head"],
    src_last: Int[torch.Tensor, " ex"],
    base_last: Int[torch.Tensor, " ex"],
    position: Where,
) -> Float[torch.Tensor, "ex head"]:
    """``sum((z_src - z_base) * grad)`` over d_head and the patched positions."""
    rows = torch.arange(z_base.shape[0])
    if position == "last":
        delta = z_src[rows, src_last] - z_base[rows, base_last]
        return (delta * grad[rows, base_last]).sum(-1)
    # Pad positions past a prompt's end never reach its metric; mask them
    # rather than trust a zero gradient.
    real = (
        torch.arange(z_base.shape[1], device=z_base.device)[None, :]
        <= base_last.to(z_base.device)[:, None]
    )
    return ((z_src - z_base) * grad * real[:, :, None, None]).sum((1, 3))


def _integrated_gradients(
    model: TransformerBridge,
    ids: torch.Tensor,
    last: torch.Tensor,
    metric: PatchMetric,
    example: torch.Tensor,
    x_base: torch.Tensor,
    x_src: torch.Tensor,
    steps: int,
) -> list[torch.Tensor]:
    """``hook_z`` gradients averaged over the midpoint interpolations of block 0's input
    residual."""
    total: list[torch.Tensor] | None = None
    for k in range(steps):
        alpha = (k + 0.5) / steps
        _, _, grads = _gradient_run(
            model, ids, last, metric, example, x_base + alpha * (x_src - x_base)
        )
        total = grads if total is None else [t + g for t, g in zip(total, grads)]
    return [t / steps for t in total]


def _attribute_chunk(
    model: TransformerBridge,
    base: tuple[torch.Tensor, torch.Tensor],
    src: tuple[torch.Tensor, torch.Tensor],
    metric: PatchMetric,
    example: torch.Tensor,
    position: Where,
    ig_steps: int,
) -> tuple[Float[torch.Tensor, "layer head ex"], torch.Tensor, torch.Tensor]:
    """Attribution of every head for one chunk of examples; also the base and source metrics."""
    (base_ids, base_last), (src_ids, src_last) = base, src
    names = [z_name(l) for l in range(model.cfg.n_layers)] + ([RESID_IN] if ig_steps else [])
    src_metric, src_cache = _cached_run(model, src_ids, src_last, metric, example, names)
    with _activation_gradients_only(model):
        if ig_steps == 0:
            base_metric, z_base, grads = _gradient_run(model, base_ids, base_last, metric, example)
        else:
            base_metric, base_cache = _cached_run(
                model, base_ids, base_last, metric, example, names
            )
            z_base = [base_cache[z_name(l)] for l in range(model.cfg.n_layers)]
            grads = _integrated_gradients(
                model,
                base_ids,
                base_last,
                metric,
                example,
                base_cache[RESID_IN],
                src_cache[RESID_IN],
                ig_steps,
            )
    per_layer = [
        _head_dot(src_cache[z_name(l)], z, g, src_last, base_last, position)
        for l, (z, g) in enumerate(zip(z_base, grads))
    ]
    return torch.stack(per_layer).transpose(1, 2).float().cpu(), base_metric.cpu(), src_metric.cpu()


def _verify(
    result: PatchResult, exact: torch.Tensor, heads: list[tuple[int, int]]
) -> dict[str, object]:
    """``meta`` entries comparing attribution and exact patching on the verified heads (means over
    examples)."""
    attribution = torch.stack([result.mean[l, h] for l, h in heads])
    exact_mean = exact.mean(-1)
    verified = [
        {"layer": l, "head": h, "attribution": float(a), "exact": float(e)}
        for (l, h), a, e in zip(heads, attribution, exact_mean)
    ]
    out: dict[str, object] = {"verified": verified}
    if len(heads) >= 3:
        rho = spearman(attribution, exact_mean)
        out["spearman_top_k"] = (
            None if rho != rho else rho
        )  # NaN (a constant side) is not valid JSON
    return out


def _check_options(
    model: TransformerBridge,
    position: str,
    direction: str,
    ig_steps: int,
    verify_top_k: int,
    batch_size: int,
) -> None:
    if position not in ("last", "all") or direction not in ("denoise", "noise"):
        raise ValueError(
            f"position must be 'last'/'all' and direction 'denoise'/'noise', "
            f"got {position!r}, {direction!r}"
        )
    if ig_steps < 0:
        raise ValueError(f"ig_steps must be >= 0 (0 = plain attribution patching), got {ig_steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    if not 0 <= verify_top_k <= n_heads:
        raise ValueError(
            f"verify_top_k must be in [0, {n_heads}] (the model's layers x heads), got "
            f"{verify_top_k}"
        )
    if model.training:
        raise RuntimeError("the model is in training mode; call model.eval() before patching")
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "attribution patching needs gradients; call it outside torch.inference_mode()"
        )


def _attribute_batches(
    model: TransformerBridge,
    batch: PairBatch,
    metric: PatchMetric,
    direction: Direction,
    position: Where,
    ig_steps: int,
    batch_size: int,
    advance: Callable[[int], None],
) -> tuple[Float[torch.Tensor, "layer head example"], torch.Tensor, torch.Tensor]:
    """Attribution of every head, ``batch_size`` examples at a time; also the base and source
    metrics. ``advance`` is told each batch's heads x examples."""
    base, src = ("ref", "cf") if direction == "denoise" else ("cf", "ref")
    chunks = []
    for start in range(0, batch.n, batch_size):
        ex = torch.arange(start, min(start + batch_size, batch.n))
        sides = [(ids[ex], last[ex]) for ids, last in (batch.side(base), batch.side(src))]
        chunks.append(_attribute_chunk(model, *sides, metric, ex, position, ig_steps))
        advance(model.cfg.n_layers * model.cfg.n_heads * len(ex))
    values, base_metric, src_metric = (torch.cat(parts, dim=-1) for parts in zip(*chunks))
    return values, base_metric, src_metric


def attribution_patch_heads(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    metric: PatchMetric,
    *,
    position: Where = "last",
    direction: Direction = "denoise",
    ig_steps: int = 0,
    verify_top_k: int = 0,
    batch_size: int = 16,
    progress: Progress = False,
) -> PatchResult:
    """Estimate every head's ``hook_z`` patching effect from gradients (see module doc).

    Args:
        model: a compat-mode TransformerBridge in eval mode.
        pairs: prompt pairs; aligned ones for ``position="all"`` or ``ig_steps > 0``.
        metric: per-example metric of last-position logits.
        position: ``"last"`` (each prompt's last position) or ``"all"`` (every position).
        direction: ``"denoise"`` (base = reference, source = counterfactual) or ``"noise"``.
        ig_steps: 0 for plain attribution patching, else the number of integrated-gradient steps.
        verify_top_k: activation-patch the ``k`` best-ranked heads exactly and store the comparison
            in ``meta["verified"]`` (and ``meta["spearman_top_k"]`` for ``k >= 3``).
        batch_size: examples per forward (the integrated-gradient and verification runs too).
        progress: ``True`` shows a bar counting cells, one per value of the result (``layers x
            heads x examples``, estimated a batch of examples at a time) plus ``verify_top_k x
            examples`` patched ones, with the rate and the time left; a callable gets the counts
            instead (see ``_engine.Progress``). Results are the same.

    Returns:
        A PatchResult whose ``values[layer, head, example]`` estimate
        ``metric(patched) - metric(base)``.

    Raises:
        ValueError: empty or misaligned pairs, bad options, NaN metric.
        RuntimeError: training mode or inference mode.
    """
    _check_options(model, position, direction, ig_steps, verify_top_k, batch_size)
    batch = PairBatch.from_pairs(pairs, model.tokenizer.pad_token_id or 0)
    if position == "all" or ig_steps:
        require_aligned(pairs)
    method = f"attribution/z/{position}/{direction}" + (f"/ig{ig_steps}" if ig_steps else "")
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    with cell_progress(progress, (n_heads + verify_top_k) * batch.n, method) as advance:
        values, base_metric, src_metric = _attribute_batches(
            model, batch, metric, direction, position, ig_steps, batch_size, advance
        )
        metric_ref, metric_cf = (
            (base_metric, src_metric) if direction == "denoise" else (src_metric, base_metric)
        )
        result = PatchResult.measured(
            values, metric_ref, metric_cf, method, metric, batch.ids, model, ig_steps=ig_steps
        )
        if not verify_top_k:
            return result
        heads = result.rank()[:verify_top_k]
        exact = patch_head_list(
            model,
            batch,
            metric,
            heads,
            position=position,
            direction=direction,
            batch_size=batch_size,
            progress=lambda cells, _total: advance(cells),  # one bar for the whole call
        )
    return dataclasses.replace(result, meta={**result.meta, **_verify(result, exact, heads)})
