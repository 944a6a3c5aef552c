"""Config fields every language model shares (its input embedding), for all model configs."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from neurobit._schema import PositiveInt, Strict

NonNegInt = Annotated[int, Field(ge=0)]


class EmbeddingFields(Strict):
    """Fields shared by every model's input embedding (:class:`HierarchicalEmbedding`)."""

    vocab_size: PositiveInt = Field(description="number of token (character) ids")
    n_word_buckets: NonNegInt = Field(
        512, description="word-id embedding rows; word ids are taken modulo this (0: off)")
    d_model: PositiveInt = Field(128, description="residual stream width d")
    n_layers: PositiveInt = Field(2, description="number of blocks")


def check_rotary_heads(d_model: int, n_heads: int) -> None:
    """Rotary attention needs ``d_model`` split into ``n_heads`` heads of even size."""
    if d_model % n_heads or (d_model // n_heads) % 2:
        raise ValueError(f"n_heads: d_model={d_model} must split into {n_heads} "
                         f"heads of even size (rotary positions)")
