"""The one-token ``step`` every language model offers, written once on top of its ``run``."""
from __future__ import annotations

from typing import Any

import torch

from neurobit.errors import ShapeError


class StepByRun:
    """Mixin: ``step(token [B], word_id [B] | None, state) -> (logits [B, V], state)`` as
    ``run`` over a one-token sequence (``run(tokens [B, T], word_ids, state)`` is the model's)."""

    def step(self, token: torch.Tensor, word_id: torch.Tensor | None,
             state: Any) -> tuple[torch.Tensor, Any]:
        """Feed one token per sequence; returns its next-token logits and the new state."""
        if token.dim() != 1:
            raise ShapeError(f"token: expected [B], got {list(token.shape)}")
        logits, state = self.run(token[:, None], None if word_id is None else word_id[:, None],
                                 state)
        return logits[:, 0], state
