"""A list of prompt pairs as right-padded tensors (what the patching engine runs)."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int

from sycointerp.chat import pad_right
from sycointerp.data.pairs import PromptPair

__all__ = ["PairBatch", "agreeing_prefix"]


def agreeing_prefix(
    a: Int[torch.Tensor, "example pos_a"], b: Int[torch.Tensor, "example pos_b"]
) -> Int[torch.Tensor, " example"]:
    """Per row, how many leading positions ``a`` and ``b`` agree on."""
    width = min(a.shape[1], b.shape[1])
    return (a[:, :width] == b[:, :width]).int().cumprod(1).sum(1)


@dataclass(frozen=True)
class PairBatch:
    """Reference and counterfactual prompts of a pair list as right-padded tensors."""

    ref: Int[torch.Tensor, "example pos"]
    cf: Int[torch.Tensor, "example pos_cf"]
    ref_last: Int[torch.Tensor, " example"]
    cf_last: Int[torch.Tensor, " example"]
    answer_ids: Int[torch.Tensor, "example 2"] | None
    ids: tuple[str, ...]

    @classmethod
    def from_pairs(cls, pairs: Sequence[PromptPair], pad_id: int) -> "PairBatch":
        """Raises: ValueError for an empty pair list."""
        if not pairs:
            raise ValueError("no prompt pairs to patch; build some with build_pairs()")
        ref, ref_len = pad_right([p.ref_ids for p in pairs], pad_id)
        cf, cf_len = pad_right([p.cf_ids for p in pairs], pad_id)
        answers = (
            None
            if any(p.answer_ids is None for p in pairs)
            else torch.tensor([p.answer_ids for p in pairs])
        )
        return cls(ref, cf, ref_len - 1, cf_len - 1, answers, tuple(p.question.id for p in pairs))

    @property
    def n(self) -> int:
        """Number of pairs (examples) in the batch."""
        return self.ref.shape[0]

    @property
    def shared_prefix(self) -> Int[torch.Tensor, " example"]:
        """Per example, the number of leading positions where the two prompts agree (at most
        the last position of either): a patch between the runs changes nothing before it."""
        same = agreeing_prefix(self.ref, self.cf)
        return torch.minimum(same, torch.minimum(self.ref_last, self.cf_last))

    def side(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, last positions) of ``"ref"`` or ``"cf"``."""
        return (self.ref, self.ref_last) if name == "ref" else (self.cf, self.cf_last)
