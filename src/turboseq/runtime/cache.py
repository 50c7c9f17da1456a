"""Decoder state: the preallocated self-attention cache and the cross-attention keys/values.

Self-attention K/V live in buffers [rows, capacity, heads, head_dim] written in place at the current
position; capacity grows by doubling (rarely) instead of concatenating at every step. Cross-attention K/V
are built once per batch with one entry per sentence and shared by all rows (beams) of that sentence.
Beam reordering and dropping finished rows are one ``select`` call.
"""

from __future__ import annotations

import torch
from torch import Tensor


class DecoderState:
    def __init__(
        self,
        cross_kv: list[tuple[Tensor, Tensor]],
        cross_mask: Tensor | None,
        group: int,
        num_heads: int,
        head_dim: int,
        max_length: int,
        initial_capacity: int = 64,
    ):
        self.cross_kv = cross_kv  # per layer: k, v [sentences, heads, src_len, head_dim]
        self.cross_mask = cross_mask  # [sentences, 1, 1, src_len] bool, True = attend; None: every key
        self.group = group  # decoder rows per sentence (beams), consecutive
        self.rows = cross_kv[0][0].shape[0] * group
        self.length = 0  # positions already written
        self.max_length = max_length
        ref = cross_kv[0][0]
        capacity = min(max_length, initial_capacity)
        # per layer: [rows, capacity, heads, head_dim]; row-major per decoder row, so reordering rows copies
        # one contiguous block per row
        shape = (self.rows, capacity, num_heads, head_dim)
        self.self_k = [torch.empty(shape, dtype=ref.dtype, device=ref.device) for _ in cross_kv]
        self.self_v = [torch.empty(shape, dtype=ref.dtype, device=ref.device) for _ in cross_kv]

    @property
    def capacity(self) -> int:
        return self.self_k[0].shape[1]

    def reserve(self, length: int) -> None:
        """Make room for ``length`` positions, doubling the buffers when they are full."""
        if length <= self.capacity:
            return
        capacity = max(length, min(self.max_length, 2 * self.capacity))
        for buffers in (self.self_k, self.self_v):
            for i, old in enumerate(buffers):
                new = old.new_empty(old.shape[0], capacity, old.shape[2], old.shape[3])
                new[:, : self.length] = old[:, : self.length]
                buffers[i] = new

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v [rows, new_len, heads, head_dim] at the current position; return the filled prefix
        as [rows, heads, length, head_dim] views."""
        end = self.length + k.shape[1]
        ks, vs = self.self_k[layer], self.self_v[layer]
        ks[: self.rows, self.length : end] = k
        vs[: self.rows, self.length : end] = v
        return ks[: self.rows, :end].transpose(1, 2), vs[: self.rows, :end].transpose(1, 2)

    def select(self, rows: Tensor, sentences: Tensor | None = None) -> None:
        """Keep decoder rows ``rows`` (new row i <- old row rows[i]) and, if given, sentences ``sentences``.

        Used both to reorder beams and to drop finished sentences; buffers are compacted in place.
        """
        n = self.length
        for buffers in (self.self_k, self.self_v):
            for buf in buffers:
                buf[: rows.numel(), :n] = buf[: self.rows, :n].index_select(0, rows)
        self.rows = rows.numel()
        if sentences is not None:
            self.cross_kv = [(k.index_select(0, sentences), v.index_select(0, sentences)) for k, v in self.cross_kv]
            if self.cross_mask is not None:
                self.cross_mask = self.cross_mask.index_select(0, sentences)
