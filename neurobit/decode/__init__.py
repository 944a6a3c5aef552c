"""Decoding: logits processors and sampling, collapse detection, degeneration metrics and the
model-agnostic generation loop with one bounded retry and ACC-driven reflection."""
from neurobit.decode.collapse import CollapseDetector, CollapseEvent, z_function
from neurobit.decode.generate import GenerationResult, generate, uncertainty_signals
from neurobit.decode.metrics import distinct_n, ngrams, rep_l, seq_rep_n
from neurobit.decode.processors import (LogitsPipeline, SamplingConfig, banned_ngram_tokens,
                                        conservative, no_repeat_ngram, repetition_penalty,
                                        temperature, thresholded_repetition_penalty, token_counts,
                                        top_k, top_p)

__all__ = ["CollapseDetector", "CollapseEvent", "z_function", "GenerationResult", "generate",
           "uncertainty_signals", "distinct_n", "ngrams", "rep_l", "seq_rep_n",
           "LogitsPipeline", "SamplingConfig", "banned_ngram_tokens", "conservative",
           "no_repeat_ngram", "repetition_penalty", "temperature",
           "thresholded_repetition_penalty", "token_counts", "top_k", "top_p"]
