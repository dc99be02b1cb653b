"""Head-selection recipes: how the heads SPT tunes are chosen, each behind one signature.

A :class:`SelectionRecipe` ranks every query head of the model from the training questions and
returns the ranking as a :class:`~sycointerp.patching.PatchResult` (``[layer, head, example]``
values; :meth:`~sycointerp.patching.PatchResult.rank` puts the head to tune first), so heat
maps, ``heads.csv``, rank intervals and :meth:`HeadSet.top_k <sycointerp.heads.HeadSet.top_k>`
work on every recipe unchanged. Registered (:data:`SELECTION_RECIPES`):

- ``path``: path patching of every head with the registered metric ``rank_metric`` on one pair
  per training question, challenged with the paper's wording: the paper's recipe with the
  apology metric (``apology_logit_diff``) and the answer recipe with ``flip`` (the
  gold-minus-wrong margin, what Truthfulness scores).
- ``pooled_wordings``: the same, on the pairs of every challenge paraphrase
  (:data:`~sycointerp.data.templates.CHALLENGES`, 12) for the first ``pairs_per_wording`` training
  questions (0 = all); a head's score is its mean effect over all those pairs. The pairs are
  pooled rather than the 12 rankings aggregated: the mean over pooled pairs estimates a head's
  expected effect over the wordings, magnitudes included, while an aggregate of ranks (Borda)
  would rank a head that matters a little under every wording below one that matters a lot
  under a few. The bootstrap of its rank intervals resamples pairs, not questions, so it
  understates the spread where one question's 12 pairs move together.
- ``loss_gradient``: aligned with the training objective. A head's score is
  ``||grad L||_1`` over the slices SPT would tune if that head alone were selected (W_Q and W_O
  rows / columns, plus its KV head's W_K and W_V where K/V are tuned), at the untuned model, where
  ``L`` is SPT's loss (mean cross-entropy over the label tokens of the insist / revise dialogues
  of the training questions, the loss :func:`~sycointerp.spt.train.train` minimises, taken here
  in eval mode: without the dropout training samples, which the models SPT targets do not use).
  Why the L1 norm: the first AdamW step moves every tuned weight by about its learning rate
  (the schedule's first value, ``lr / warmup_steps`` with warmup) against its gradient's sign
  (Adam divides the first gradient by its own magnitude; the zero-initialised deltas have no
  weight decay), so that rate times ``||grad L||_1`` is the first-order loss decrease of the
  first step if that head alone were tuned; the rate is the same for every head, so the ranking
  is the L1 norm's. One "example" (the whole dialogue set): its values have no per-example
  spread, so no rank intervals.
- ``probe``: held-out accuracy of a linear probe on each head's output separating challenge from
  counterfactual (:func:`sycointerp.probing.probe_heads`; the ranking ITI steers).

Adding a recipe is a function ``(SelectionInputs) -> PatchResult`` and one
:func:`register_selection_recipe` call; the SPT experiment (``--selection``) and the study read
only this registry.
"""

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from sycointerp._registry import Registry
from sycointerp.data.questions import Question
from sycointerp.errors import UserError
from sycointerp.heads import HeadGrid, HeadSet
from sycointerp.patching.results import PatchResult
from sycointerp.spt.data import TrainExample, build_dialogues, loss_tokens, tokenize_dialogues
from sycointerp.spt.slices import head_slices
from sycointerp.spt.train import loss_sum
from sycointerp.spt.tunable import frozen

__all__ = [
    "RankingMismatch",
    "SELECTION_RECIPES",
    "check_ranking",
    "SelectionInputs",
    "SelectionRecipe",
    "loss_gradient_scores",
    "metric_pairs",
    "register_selection_recipe",
    "select_heads",
    "top_heads",
]


@dataclass(frozen=True)
class SelectionInputs:
    """What a recipe ranks from.

    Attributes:
        hf: the untuned HuggingFace model (gradients are taken on its real weights).
        tokenizer: its tokenizer (with a chat template).
        hooked: returns the hooked model of ``hf`` (built only by recipes that patch or probe).
        questions: the training questions.
        options: the experiment's options by name: ``rank_metric``, ``system``, ``seed``,
            ``kinds``, ``tune_kv`` ("auto" / "yes" / "no"), ``batch_size``, ``pairs_per_wording``.
        progress: show path patching's progress bar.
    """

    hf: torch.nn.Module
    tokenizer: Any
    hooked: Callable[[], Any]
    questions: tuple[Question, ...]
    options: Mapping[str, Any]
    progress: bool = False

    @property
    def system(self) -> str | None:
        """The system prompt (None for none)."""
        return self.options.get("system") or None


@dataclass(frozen=True)
class SelectionRecipe:
    """A registered way of ranking the heads to tune.

    Attributes:
        name: the ``--selection`` value.
        label: how tables and figures describe it.
        rank: ranks every query head (module docstring).
        uses_metric: whether ``rank_metric`` changes its ranking (the path-patching recipes).
        repatch: its ranking is path patching on :func:`metric_pairs` of the paper's wording, so
            the tuned model can be re-patched on the same pairs (the paper's before / after).
    """

    name: str
    label: str
    rank: Callable[[SelectionInputs], PatchResult]
    uses_metric: bool = False
    repatch: bool = False


SELECTION_RECIPES: Registry[SelectionRecipe] = Registry("head-selection recipe")


def register_selection_recipe(recipe: SelectionRecipe, *, replace: bool = False) -> SelectionRecipe:
    """Make ``recipe`` a choice of the SPT experiment (``--selection``) and of the study.

    Raises:
        ValueError: a taken name (without ``replace``) or a name that is not an identifier.
    """
    return SELECTION_RECIPES.register(recipe, replace=replace)


class RankingMismatch(UserError):
    """A saved ranking was made by another recipe or metric than the one asked for."""


def select_heads(recipe: str, inputs: SelectionInputs, k: int) -> tuple[HeadSet, PatchResult]:
    """The top ``k`` heads of ``recipe``'s ranking, and the ranking (its ``meta`` records the
    recipe as ``"selection"``, read back by :func:`check_ranking`).

    Raises:
        KeyError: an unknown recipe.
        ValueError: ``k`` outside ``[1, number of heads]``.
    """
    result = SELECTION_RECIPES[recipe].rank(inputs)
    result = dataclasses.replace(result, meta={**result.meta, "selection": recipe})
    return top_heads(recipe, result, k), result


def check_ranking(result: PatchResult, recipe: str, metric: str, where: str) -> None:
    """Refuse a saved ranking made by another recipe, or by a path-patching recipe with another
    metric, than ``recipe`` / ``metric`` (a ranking saved before the recipes were recorded is a
    ``path`` ranking: the only one then).

    Raises:
        RankingMismatch: naming what the ranking in ``where`` was made with.
    """
    made = result.meta.get("selection") or ("path" if result.method.startswith("path/") else "")
    if made != recipe:
        raise RankingMismatch(
            f"{where} holds a ranking by {made or result.method}, not by {recipe}; use an empty "
            "ranking directory (or --overwrite the run)"
        )
    if SELECTION_RECIPES[recipe].uses_metric and result.metric != metric:
        raise RankingMismatch(
            f"{where} holds a {recipe} ranking by the metric {result.metric}, not {metric}; use "
            "an empty ranking directory (or --overwrite the run)"
        )


def top_heads(recipe: str, result: PatchResult, k: int) -> HeadSet:
    """The top ``k`` heads of ``recipe``'s ranking ``result``, its source naming both.

    Raises:
        ValueError: ``k`` outside ``[1, number of heads]`` or a result that is not per head.
    """
    heads = HeadSet.top_k(result, k)
    source = f"top-{k} of {recipe} ({result.method})"
    return HeadSet(heads.heads, heads.n_layers, heads.n_heads, source)


# --------------------------------------------------------------------------- path patching


def metric_pairs(
    model: Any,
    questions: Sequence[Question],
    metric: str,
    challenges: Sequence[str],
    system: str | None,
) -> tuple[list[Any], Any]:
    """The pairs of every question under each wording of ``challenges`` (wording-major), ending
    where the registered ``metric`` reads, and the metric built for them.

    Raises:
        KeyError: an unknown metric or wording.
        DataError: as :func:`~sycointerp.data.pairs.build_pairs`.
    """
    from sycointerp.data.pairs import build_pairs
    from sycointerp.metrics import METRICS

    entry, tok = METRICS[metric], model.tokenizer
    pairs = [
        pair
        for challenge in challenges
        for pair in build_pairs(
            list(questions),
            tok,
            challenge=challenge,
            position=entry.position,
            system=system or None,
        )
    ]
    return pairs, entry.build(tok, pairs)


def _path(inputs: SelectionInputs, challenges: Sequence[str], limit: int = 0) -> PatchResult:
    from sycointerp.patching.path import path_patch_heads

    model = inputs.hooked()
    questions = inputs.questions[:limit] if limit else inputs.questions
    pairs, metric = metric_pairs(
        model, questions, inputs.options["rank_metric"], challenges, inputs.system
    )
    return path_patch_heads(model, pairs, metric, batch_size=64, progress=inputs.progress)


def _paper_wording(inputs: SelectionInputs) -> PatchResult:
    from sycointerp.data.templates import PAPER_CHALLENGE

    return _path(inputs, [PAPER_CHALLENGE])


def _pooled_wordings(inputs: SelectionInputs) -> PatchResult:
    from sycointerp.data.templates import CHALLENGES

    return _path(inputs, list(CHALLENGES), int(inputs.options.get("pairs_per_wording", 0)))


# --------------------------------------------------------------------------- loss gradient


@contextmanager
def _weights_with_grad(model: torch.nn.Module, weights: Sequence[torch.Tensor]) -> Iterator[None]:
    """Only ``weights`` require gradients inside, the model in eval mode; both restored after."""
    was_training = model.training
    with frozen(model):
        for w in weights:
            w.requires_grad_(True)
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)


def loss_gradient_scores(
    model: torch.nn.Module,
    examples: Sequence[TrainExample],
    *,
    pad_id: int,
    tune_kv: bool | None = None,
    batch_size: int = 8,
) -> tuple[Float[torch.Tensor, "layer head"], float]:
    """Every query head's ``||grad L||_1`` over its SPT slices, and the loss ``L`` (module doc).

    One backward pass per batch gives the gradient of every attention weight; each head's score
    is read off its slices (a KV slice shared by a group counts for every head of the group,
    as it would be tuned with any of them). Equals tuning each head's zero deltas alone and
    summing their gradients' magnitudes (tested).

    Args:
        model: a HuggingFace causal LM (unchanged: gradients are returned, not stored).
        examples: tokenized training dialogues.
        pad_id: padding token id.
        tune_kv: as :func:`~sycointerp.spt.slices.head_slices`.
        batch_size: dialogues per forward.

    Raises:
        ValueError: no examples or no label token.
        UnsupportedArchitecture: as :func:`~sycointerp.spt.slices.head_slices`.
    """
    n_tokens = loss_tokens(examples)
    if not examples or n_tokens == 0:
        raise ValueError("no training examples with a label token to take the loss gradient on")
    grid = HeadGrid.from_config(model.config)
    heads = tuple((layer, head) for layer in range(grid.n_layers) for head in range(grid.n_heads))
    every = HeadSet(heads, grid.n_layers, grid.n_heads, "every head")
    slices = head_slices(model, every, tune_kv=tune_kv)
    weights = list({id(s.module.weight): s.module.weight for s in slices}.values())
    grads = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    device, loss = weights[0].device, 0.0
    with _weights_with_grad(model, weights):
        for start in range(0, len(examples), batch_size):
            batch_loss = loss_sum(model, examples[start : start + batch_size], pad_id, device)
            batch_loss = batch_loss / n_tokens
            for g, dw in zip(grads, torch.autograd.grad(batch_loss, weights)):
                g += dw.float()
            loss += float(batch_loss.detach())
    where = {id(w): g for w, g in zip(weights, grads)}
    group = grid.n_heads // grid.n_kv_heads
    scores = torch.zeros(grid.n_layers, grid.n_heads)
    for s in slices:
        magnitude = where[id(s.module.weight)].narrow(s.dim, s.start, s.size).abs().sum()
        readers = (
            [s.index] if s.role in ("q", "o") else range(s.index * group, (s.index + 1) * group)
        )
        for head in readers:
            scores[s.layer, head] += magnitude.cpu()
    return scores, loss


def _loss_gradient(inputs: SelectionInputs) -> PatchResult:
    from sycointerp.heads import model_meta

    options = inputs.options
    dialogues = build_dialogues(
        inputs.questions, kinds=options["kinds"], seed=options["seed"], system=inputs.system
    )
    examples = tokenize_dialogues(inputs.tokenizer, dialogues)
    tune_kv = {"auto": None, "yes": True, "no": False}[options.get("tune_kv", "auto")]
    scores, loss = loss_gradient_scores(
        inputs.hf,
        examples,
        pad_id=inputs.tokenizer.pad_token_id,
        tune_kv=tune_kv,
        batch_size=int(options.get("batch_size", 8)),
    )
    ref = torch.tensor([loss])
    return PatchResult(
        scores[..., None],
        ref,
        ref.clone(),
        "loss_gradient/spt_slices",
        "spt_loss_grad_l1",
        False,
        example_ids=("all dialogues",),
        meta={**model_meta(inputs.hf), "n_dialogues": len(examples)},
    )


# --------------------------------------------------------------------------- probe


def _probe(inputs: SelectionInputs) -> PatchResult:
    from sycointerp.data.pairs import build_pairs
    from sycointerp.probing import probe_heads

    model = inputs.hooked()
    pairs = build_pairs(
        list(inputs.questions), model.tokenizer, position="reply", system=inputs.system
    )
    return probe_heads(model, pairs, seed=int(inputs.options["seed"]))[0]


register_selection_recipe(
    SelectionRecipe(
        "path",
        "path patching, one wording (rank_metric)",
        _paper_wording,
        uses_metric=True,
        repatch=True,
    )
)
register_selection_recipe(
    SelectionRecipe(
        "pooled_wordings",
        "path patching, pooled over the 12 challenge wordings",
        _pooled_wordings,
        uses_metric=True,
    )
)
register_selection_recipe(
    SelectionRecipe("loss_gradient", "gradient of the SPT loss (L1 per head)", _loss_gradient)
)
register_selection_recipe(SelectionRecipe("probe", "probe accuracy (held out)", _probe))
