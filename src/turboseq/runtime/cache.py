"""Decoder state: the preallocated self-attention cache and, for encoder-decoders, the cross-attention K/V.

Self-attention K/V live in buffers [rows, capacity, kv_heads, head_dim] written in place at the current
position; capacity grows by doubling (rarely) instead of concatenating at every step. Cross-attention K/V
are built once per batch with one entry per sentence and shared by all rows (beams) of that sentence.
A decoder-only batch of left-padded prompts records each row's padding instead: its keys are masked and its
positions start after it. Beam reordering and dropping finished rows are one ``select`` call.
"""

from __future__ import annotations

import torch
from torch import Tensor


class DecoderState:
    def __init__(
        self,
        cross_kv: list[tuple[Tensor, Tensor]] | None,
        cross_mask: Tensor | None,
        group: int,
        num_heads: int,
        head_dim: int,
        max_length: int,
        initial_capacity: int = 64,
        *,
        layers: int | None = None,
        rows: int | None = None,
        like: Tensor | None = None,
        padding: Tensor | None = None,
    ):
        """Encoder-decoder: ``cross_kv`` per layer, rows = sentences x ``group``. Decoder-only: ``cross_kv``
        None, with ``layers``, ``rows``, a tensor ``like`` giving dtype and device, and ``padding`` [rows]:
        the left-padding length of each row (None: no row is padded)."""
        self.cross_kv = cross_kv  # per layer: k, v [sentences, heads, src_len, head_dim]
        self.cross_mask = cross_mask  # [sentences, 1, 1, src_len] bool, True = attend; None: every key
        self.group = group  # decoder rows per sentence (beams), consecutive
        if cross_kv is not None:
            layers, rows, like = len(cross_kv), cross_kv[0][0].shape[0] * group, cross_kv[0][0]
        self.rows = rows
        self.padding = padding  # [rows] left padding per row (decoder-only), or None
        self.length = 0  # positions already written
        self.max_length = max_length
        capacity = min(max_length, initial_capacity)
        # per layer: [rows, capacity, kv_heads, head_dim]; row-major per decoder row, so reordering rows copies
        # one contiguous block per row
        shape = (rows, capacity, num_heads, head_dim)
        self.self_k = [torch.empty(shape, dtype=like.dtype, device=like.device) for _ in range(layers)]
        self.self_v = [torch.empty(shape, dtype=like.dtype, device=like.device) for _ in range(layers)]
        # {layer: [head, ...]}: cross-attention heads whose pre-softmax scores decode_step appends to ``captured``
        # as [sentences, len(heads), queries, src_len] (Whisper's word alignment)
        self.capture: dict[int, list[int]] | None = None
        self.captured: list[Tensor] = []

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

    def positions(self, new_len: int) -> Tensor | None:
        """Positions [rows, new_len] of the next ``new_len`` tokens counted from each row's first real token
        (padding at position 0, as transformers), or None when no row is padded (then positions are
        ``length ..``)."""
        if self.padding is None:
            return None
        steps = torch.arange(self.length, self.length + new_len, device=self.padding.device)
        return (steps[None, :] - self.padding[:, None]).clamp_(min=0)

    def self_mask(self, new_len: int) -> Tensor | None:
        """Bool mask [rows, 1, new_len, length + new_len] for the next ``new_len`` queries (True = attend):
        causal, and no row attends to its padding, except that a padding query sees itself (so that nothing
        it computes is NaN). None when no row is padded."""
        if self.padding is None:
            return None
        end = self.length + new_len
        device = self.padding.device
        keys = torch.arange(end, device=device)
        queries = torch.arange(self.length, end, device=device)
        causal = keys[None, :] <= queries[:, None]  # [new_len, end]
        real = keys[None, :] >= self.padding[:, None]  # [rows, end]
        mask = (causal[None] & real[:, None, :]) | (keys[None, :] == queries[:, None])[None]
        return mask[:, None]

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v [rows, new_len, kv_heads, head_dim] at the current position; return the filled prefix
        as [rows, kv_heads, length, head_dim] views."""
        end = self.length + k.shape[1]
        ks, vs = self.self_k[layer], self.self_v[layer]
        ks[: self.rows, self.length : end] = k
        vs[: self.rows, self.length : end] = v
        return ks[: self.rows, :end].transpose(1, 2), vs[: self.rows, :end].transpose(1, 2)

    def narrow(self, share: int) -> None:
        """Hold one row per ``share`` consecutive rows (the beams or samples of one input), so that a prompt
        they have in common runs once; ``widen`` then copies each row's cache back to its ``share`` rows."""
        self.rows //= share
        self.group = max(1, self.group // share)
        if self.padding is not None:
            self.padding = self.padding[::share]

    def widen(self, share: int, group: int) -> None:
        """Undo ``narrow``: every row copied to ``share`` consecutive rows, ``group`` rows per sentence."""
        self.select(torch.arange(self.rows, device=self.self_k[0].device).repeat_interleave(share))
        self.group = group

    def select(self, rows: Tensor, sentences: Tensor | None = None) -> None:
        """Keep decoder rows ``rows`` (new row i <- old row rows[i]) and, if given, sentences ``sentences``.

        Used to reorder beams, to drop finished sentences, and (decoder-only) to copy a prompt prefilled
        once into the rows of its beams or samples; buffers are compacted (or grown) in place.
        """
        n = self.length
        moved = None  # rows whose source is another row; the others stay where they are
        if rows.numel() <= self.rows:
            moved = (rows != torch.arange(rows.numel(), device=rows.device)).nonzero().squeeze(1)
        for buffers in (self.self_k, self.self_v):
            for i, buf in enumerate(buffers):
                if moved is not None:
                    if moved.numel():
                        kept = buf[: self.rows, :n].index_select(0, rows.index_select(0, moved))
                        buf[:, :n].index_copy_(0, moved, kept)
                    continue
                kept = buf[: self.rows, :n].index_select(0, rows)
                if rows.numel() > buf.shape[0]:  # more rows than the buffer holds: grow it
                    buf = buffers[i] = buf.new_empty(rows.numel(), *buf.shape[1:])
                buf[: rows.numel(), :n] = kept
        self.rows = rows.numel()
        if self.padding is not None:
            self.padding = self.padding.index_select(0, rows)
        if sentences is not None and self.cross_kv is not None:
            self.cross_kv = [(k.index_select(0, sentences), v.index_select(0, sentences)) for k, v in self.cross_kv]
            if self.cross_mask is not None:
                self.cross_mask = self.cross_mask.index_select(0, sentences)
