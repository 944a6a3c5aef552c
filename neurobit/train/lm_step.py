"""Language-model generation glue: a trained model and its tokenizer as the ``step_fn`` of
:func:`neurobit.decode.generate` (used by ``neurobit generate`` and the LM study)."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from neurobit.train.tokenizer import DEFAULT_WORD_BUCKETS, bucket_word_hashes


class _StepState(NamedTuple):
    """State of :func:`lm_step_fn` between tokens."""

    model: Any         # the model's own generation state (BrainLMState / GPTState)
    fed: int           # tokens of the running sequence the model has read
    word_start: int    # first token after the last separator-ending token (word hashes restart)


def lm_step_fn(model, tokenizer):
    """Wrap ``model.step``/``model.run`` into :func:`neurobit.decode.generate`'s
    ``step_fn(tokens_so_far [1, t], state) -> (logits [1, V], state)``.

    Each call feeds the tokens not yet read (the whole prompt on the first call, then the one
    sampled token) with their causal word ids: the word hash of a token depends only on the
    tokens since the last separator-ending one, so it is computed on that tail (the same ids
    ``tokenizer.word_ids`` gives on the whole running text, and the data layer in training).
    The state is never modified in place (reflection passes may reuse it).
    """
    use_words = getattr(model.cfg, "n_word_buckets", 0) > 0
    has_run = hasattr(model, "run")

    @torch.no_grad()
    def step(seq: torch.Tensor, state):
        ids = seq[0]
        t = ids.shape[0]
        if state is None:
            state = _StepState(model.initial_state(1), 0, 0)
        ms, fed, ws = state
        new = ids[fed:t]
        w, ws_next = None, ws
        if use_words:
            h = tokenizer.token_word_hashes(ids[ws:t])
            w = bucket_word_hashes(h[fed - ws:], DEFAULT_WORD_BUCKETS)[None]
            seps = np.flatnonzero(h == 0)
            ws_next = ws + int(seps[-1]) + 1 if seps.size else ws
        if has_run:
            logits, ms = model.run(new[None], w, ms)
            logits = logits[:, -1]
        else:
            for i in range(new.shape[0]):
                logits, ms = model.step(new[i:i + 1], None if w is None else w[:, i], ms)
        return logits.float(), _StepState(ms, t, ws_next)

    return step
