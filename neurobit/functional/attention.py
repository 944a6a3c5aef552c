"""Grouped (local) attention among circuits, with an optional fast-weight memory term.

For circuits i, j of the same group (queries ``q``, keys ``k``, values ``v``, memory ``M``)::

    S_ij = s * (q_i . k_j + q_i . (M k_j)) = s * q_i . (k_j + M k_j)      s = 1/sqrt(d) by default
    a_ij = softmax_j(S_ij)      over the members j of i's group only
    h'_i = sum_j a_ij v_j

Circuits in different groups never attend to each other (``a_ij = 0``). The grouped form runs as
one batched computation over groups: members are gathered into ``[B, G, S, d]`` (S = largest
group, shorter groups padded and masked with ``-inf``), so there is no Python loop over circuits
or groups. :func:`masked_attention` is the reference: full ``[C, C]`` attention with a ``-inf``
block mask; the two agree to rounding (tested).

Group layout: an int ``G`` (contiguous equal groups of ``C // G`` circuits; ``C % G == 0``) or an
explicit partition of ``range(C)`` as a list of lists (each circuit exactly once; the order
inside a list is the order of the attention-weight columns).

Shapes: ``q``, ``k``, ``v`` ``[B, C, d]``; ``M`` ``[B, d, d]`` or ``None`` (no memory term).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence, Union

import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.fast_weights import fast_weight_read

Groups = Union[int, Sequence[Sequence[int]]]


class GroupLayout(NamedTuple):
    """A partition of C circuits into G groups, in the padded form the batched code uses.

    Attributes:
        members: ``[G, S]`` long, circuit index of each member (padding repeats a member).
        valid: ``[G, S]`` bool, False on padding.
        group_of: ``[C]`` long, the group of each circuit.
        position: ``[C]`` long, each circuit's position (column) inside its group.
    """

    members: torch.Tensor
    valid: torch.Tensor
    group_of: torch.Tensor
    position: torch.Tensor

    @property
    def n_circuits(self) -> int:
        return int(self.group_of.numel())

    @property
    def n_groups(self) -> int:
        return int(self.members.shape[0])

    @property
    def group_size(self) -> int:
        """S: the size of the largest group (the last axis of the attention weights)."""
        return int(self.members.shape[1])

    @property
    def contiguous(self) -> bool:
        """Equal groups of consecutive circuits: grouping is then a reshape (no gather)."""
        return bool(self.valid.all()) and torch.equal(
            self.members.reshape(-1).cpu(), torch.arange(self.members.numel()))

    def sizes(self) -> list[int]:
        return [int(n) for n in self.valid.sum(1)]

    def as_lists(self) -> list[list[int]]:
        return [[int(c) for c, ok in zip(m, v) if ok] for m, v in zip(self.members, self.valid)]


def group_layout(groups: Groups, n_circuits: int) -> GroupLayout:
    """Validate ``groups`` for ``n_circuits`` circuits and build its :class:`GroupLayout`."""
    C = int(n_circuits)
    if C < 1:
        raise ParameterError(f"n_circuits: must be >= 1, got {n_circuits}")
    if isinstance(groups, bool):
        raise ParameterError(f"groups: expected an int or a list of lists, got {groups!r}")
    if isinstance(groups, int):
        if groups < 1 or C % groups != 0:
            raise ParameterError(f"groups: {groups} groups do not divide {C} circuits evenly")
        size = C // groups
        lists = [list(range(g * size, (g + 1) * size)) for g in range(groups)]
    else:
        try:
            lists = [[int(c) for c in grp] for grp in groups]
        except TypeError as e:
            raise ParameterError(f"groups: expected an int or a list of lists, "
                                 f"got {groups!r}") from e
        if not lists or any(len(grp) == 0 for grp in lists):
            raise ParameterError(f"groups: every group needs at least one circuit, got {lists}")
        flat = sorted(c for grp in lists for c in grp)
        if flat != list(range(C)):
            raise ParameterError(f"groups: must partition range({C}) (every circuit exactly "
                                 f"once), got {lists}")
    S = max(len(grp) for grp in lists)
    members = torch.tensor([grp + [grp[0]] * (S - len(grp)) for grp in lists], dtype=torch.long)
    valid = torch.tensor([[True] * len(grp) + [False] * (S - len(grp)) for grp in lists])
    group_of = torch.empty(C, dtype=torch.long)
    position = torch.empty(C, dtype=torch.long)
    for g, grp in enumerate(lists):
        for s, c in enumerate(grp):
            group_of[c], position[c] = g, s
    return GroupLayout(members, valid, group_of, position)


def block_mask(layout: GroupLayout) -> torch.Tensor:
    """``[C, C]`` bool: True where circuits i and j share a group."""
    return layout.group_of[:, None] == layout.group_of[None, :]


def to_groups(x: torch.Tensor, layout: GroupLayout) -> torch.Tensor:
    """Gather ``x`` ``[B, C, ...]`` into ``[B, G, S, ...]`` (padding entries set to 0)."""
    if x.dim() < 2 or x.shape[1] != layout.n_circuits:
        raise ShapeError(f"x: expected [B, C={layout.n_circuits}, ...], got {list(x.shape)}")
    if layout.contiguous:
        return x.reshape(x.shape[0], layout.n_groups, layout.group_size, *x.shape[2:])
    xg = x[:, layout.members.to(x.device)]
    valid = layout.valid.to(x.device).view(1, *layout.valid.shape, *([1] * (x.dim() - 2)))
    return xg * valid.to(x.dtype) if not bool(layout.valid.all()) else xg


def from_groups(xg: torch.Tensor, layout: GroupLayout) -> torch.Tensor:
    """Inverse of :func:`to_groups`: ``[B, G, S, ...]`` -> ``[B, C, ...]`` (padding dropped)."""
    if layout.contiguous:
        return xg.reshape(xg.shape[0], layout.n_circuits, *xg.shape[3:])
    return xg[:, layout.group_of.to(xg.device), layout.position.to(xg.device)]


def expand_group_weights(w: torch.Tensor, layout: GroupLayout) -> torch.Tensor:
    """Grouped attention weights ``[B, C, S]`` as a full ``[B, C, C]`` matrix (0 across groups)."""
    B, C, S = w.shape
    cols = layout.members.to(w.device)[layout.group_of.to(w.device)]          # [C, S]
    valid = layout.valid.to(w.device)[layout.group_of.to(w.device)]          # [C, S]
    full = torch.zeros(B, C, C, dtype=w.dtype, device=w.device)
    return full.scatter_add(2, cols.expand(B, C, S), w * valid.to(w.dtype))


def score_scale(d: int, scale: float | None) -> float:
    """``1/sqrt(d)`` when ``scale`` is None, else ``scale`` (pass 1.0 to disable scaling)."""
    if scale is None:
        return 1.0 / math.sqrt(d)
    if not (math.isfinite(scale) and scale > 0):
        raise ParameterError(f"scale: must be a finite number > 0 or None, got {scale}")
    return float(scale)


def effective_keys(k: torch.Tensor, M: torch.Tensor | None) -> torch.Tensor:
    """``k_j + M k_j`` (``k_j`` alone without memory): ``q . k_eff = q . k + q . (M k)``."""
    return k if M is None else k + fast_weight_read(M, k)


def _check_qkv(q, k, v) -> None:
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ShapeError(f"q/k/v: expected three equal [B, C, d] shapes, got {list(q.shape)}, "
                         f"{list(k.shape)}, {list(v.shape)}")


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: GroupLayout,
                      M: torch.Tensor | None = None,
                      scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention within groups, batched over groups.

    Returns:
        ``(h_prime [B, C, d], weights [B, C, S])``; ``weights[b, i, s]`` is the weight circuit i
        gives member s of its group (``layout.members[group_of[i], s]``); 0 on padding, and each
        row sums to 1.
    """
    _check_qkv(q, k, v)
    s = score_scale(q.shape[-1], scale)
    qg = to_groups(q, layout)                                    # [B, G, S, d]
    kg = to_groups(effective_keys(k, M), layout)
    vg = to_groups(v, layout)
    scores = torch.einsum("bgsd,bgtd->bgst", qg, kg) * s         # [B, G, S, S]
    key_valid = layout.valid.to(q.device)[None, :, None, :]
    scores = scores.masked_fill(~key_valid, float("-inf"))
    w = torch.softmax(scores, dim=-1)
    out = torch.einsum("bgst,bgtd->bgsd", w, vg)
    return from_groups(out, layout), from_groups(w, layout)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     M: torch.Tensor | None = None,
                     scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: full attention over all C circuits with ``-inf`` where ``mask`` ``[C, C]`` is
    False. Returns ``(h_prime [B, C, d], weights [B, C, C])``. Every row of ``mask`` needs a
    True entry."""
    _check_qkv(q, k, v)
    C = q.shape[1]
    if mask.shape != (C, C):
        raise ShapeError(f"mask: expected [{C}, {C}], got {list(mask.shape)}")
    if not bool(mask.any(1).all()):
        raise ParameterError("mask: every circuit must attend to at least one circuit")
    scores = q @ effective_keys(k, M).transpose(1, 2) * score_scale(q.shape[-1], scale)
    w = torch.softmax(scores.masked_fill(~mask.to(q.device), float("-inf")), dim=-1)
    return w @ v, w
