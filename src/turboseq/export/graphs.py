"""The pieces of an encoder-decoder as exportable graphs (``torch.export``), and the state that drives them.

A generation artifact (``turboseq export``) holds five programs built from these modules:

- ``encoder``: source ids and mask [S, src] (Whisper: log-mel features [S, mels, frames]) -> hidden [S, src, d];
- ``cross_kv``: hidden -> cross-attention keys and values [layers, S, heads, src, head_dim], once per input;
- ``prefill`` and ``step``: the decoder on a prompt of 2+ tokens, and on one token per row, for one row per
  input (greedy, sampling); ``prefill_beams`` and ``step_beams`` for 2+ rows per input. They take the rows
  grouped by input, tokens [S, G, n] (G rows per input: beams), the self-attention cache
  [length, layers, S, G, kv_heads, head_dim] for keys and for values, whose last n positions the program writes
  in place, and the cross-attention keys/values (and the source mask [S, src] for text). They return the hidden
  state of each row's last position [S * G, d];
- ``head``: hidden -> float32 logits [rows, vocab].

The cache is time-major so that the filled prefix of a preallocated buffer (``buffer[:length]``) is one
contiguous block, which compiled programs require of their inputs; its length is the program's time axis, so
positions need no extra input. ``ProgramState`` owns the buffers and has ``DecoderState``'s ``select``, so the
search loops drive programs exactly as they drive the eager decoder.
"""

from __future__ import annotations

import torch
from torch import Tensor

from turboseq.runtime.decoding import decode_step
from turboseq.runtime.layers import build_cross_kv, encode, linear
from turboseq.runtime.spec import Linear, Seq2SeqSpec

# programs in an artifact, in the order they run
PROGRAMS = ("encoder", "cross_kv", "prefill", "prefill_beams", "step", "step_beams", "head")


class _CacheView:
    """``DecoderState``'s interface over a program's inputs, for ``decode_step`` inside a traced graph: the
    self-attention cache [length, layers, S, G, kv_heads, head_dim] whose last ``n`` positions are new."""

    padding = None
    capture = None  # no attention capture inside a program

    def __init__(self, cache_k: Tensor, cache_v: Tensor, cross_k: Tensor, cross_v: Tensor, mask, new_len: int):
        self.cache_k, self.cache_v = cache_k, cache_v
        self.cross_kv = [(cross_k[i], cross_v[i]) for i in range(cross_k.shape[0])]
        self.cross_mask = mask
        self.group = cache_k.shape[3]
        self.rows = cache_k.shape[2] * cache_k.shape[3]
        self.length = cache_k.shape[0] - new_len  # positions already written

    def reserve(self, length: int) -> None:
        pass

    def positions(self, new_len: int) -> None:
        return None

    def self_mask(self, new_len: int) -> None:
        return None

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """k, v [rows, n, kv_heads, head_dim] into the cache; the keys and values so far [rows, kv_heads, end,
        head_dim]."""
        end, _, sentences, group, heads, head_dim = self.cache_k.shape
        out = []
        for cache, new in ((self.cache_k, k), (self.cache_v, v)):
            cache[self.length :, layer] = new.view(sentences, group, -1, heads, head_dim).permute(2, 0, 1, 3, 4)
            out.append(cache[:, layer].reshape(end, self.rows, heads, head_dim).permute(1, 2, 0, 3))
        return out[0], out[1]


class EncoderGraph(torch.nn.Module):
    def __init__(self, spec: Seq2SeqSpec, audio: bool):
        super().__init__()
        self.spec, self.audio = spec, audio

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return encode(self.spec.encoder, inputs, None if self.audio else attention_mask)


class CrossKVGraph(torch.nn.Module):
    def __init__(self, spec: Seq2SeqSpec):
        super().__init__()
        self.spec = spec

    def forward(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        kv = build_cross_kv(self.spec, hidden)
        return torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])


class StepGraph(torch.nn.Module):
    """The decoder on tokens [S, G, n] (see the module's docstring); ``masked``: the inputs carry a source mask."""

    def __init__(self, spec: Seq2SeqSpec, masked: bool):
        super().__init__()
        self.spec, self.masked = spec, masked

    def forward(self, tokens, cache_k, cache_v, cross_k, cross_v, source_mask=None) -> Tensor:
        new_len = tokens.shape[2]
        mask = source_mask[:, None, None, :] if self.masked else None
        state = _CacheView(cache_k, cache_v, cross_k, cross_v, mask, new_len)
        return decode_step(self.spec, state, tokens.flatten(0, 1))


class HeadGraph(torch.nn.Module):
    def __init__(self, lm_head: Linear):
        super().__init__()
        self.lm_head = lm_head

    def forward(self, hidden: Tensor) -> Tensor:
        return linear(hidden, self.lm_head).float()


class ProgramState:
    """The decoder state of programs: preallocated time-major cache buffers and the cross-attention
    keys/values. ``select`` as ``DecoderState.select``: beams are reordered here, between program calls (an
    in-place reordering inside a compiled graph read rows it had already overwritten)."""

    def __init__(
        self,
        programs: dict,
        cross_k: Tensor,
        cross_v: Tensor,
        cross_mask: Tensor | None,
        group: int,
        max_length: int,
        kv_heads: int,
        head_dim: int,
        initial_capacity: int = 64,
    ):
        self.programs = programs  # name -> callable (exported module or compiled runner)
        self.cross_k, self.cross_v, self.cross_mask = cross_k, cross_v, cross_mask
        self.sentences, self.group = cross_k.shape[1], group
        self.length, self.max_length = 0, max_length
        layers = cross_k.shape[0]
        shape = (min(max_length, initial_capacity), layers, self.sentences, group, kv_heads, head_dim)
        self.cache_k = cross_k.new_empty(shape)
        self.cache_v = cross_k.new_empty(shape)

    @property
    def rows(self) -> int:
        return self.sentences * self.group

    def _reserve(self, length: int) -> None:
        capacity = self.cache_k.shape[0]
        if length <= capacity:
            return
        capacity = max(length, min(self.max_length, 2 * capacity))
        for name in ("cache_k", "cache_v"):
            old = getattr(self, name)
            new = old.new_empty((capacity, *old.shape[1:]))
            new[: self.length] = old[: self.length]
            setattr(self, name, new)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed tokens [rows, n]; the last position's hidden state [rows, d_model]."""
        n = tokens.shape[1]
        end = self.length + n
        self._reserve(end)
        args = [
            # compiled programs read their inputs as contiguous: the search hands over column slices
            tokens.reshape(self.sentences, self.group, n).contiguous(),
            self.cache_k[:end],
            self.cache_v[:end],
            self.cross_k,
            self.cross_v,
        ]
        if self.cross_mask is not None:
            args.append(self.cross_mask)
        name = ("step" if n == 1 else "prefill") + ("_beams" if self.group > 1 else "")
        hidden = self.programs[name](*args)
        self.length = end
        return hidden

    def select(self, rows: Tensor, sentences: Tensor | None = None) -> None:
        """Keep rows ``rows`` (new row i <- old row rows[i]) and, if given, inputs ``sentences``."""
        if sentences is None and rows.numel() == self.rows:  # beams reordered: in place
            for buf in (self.cache_k, self.cache_v):
                past = buf[: self.length].flatten(2, 3)
                past.copy_(past.index_select(2, rows))
            return
        if sentences is None:  # fewer rows without naming inputs: only when each input has one row
            sentences = rows
        n = self.length
        keep = sentences.numel()
        group = rows.numel() // keep
        for name in ("cache_k", "cache_v"):
            buf = getattr(self, name)
            kept = buf[:n].flatten(2, 3).index_select(2, rows)
            new = buf.new_empty((buf.shape[0], buf.shape[1], keep, group, *buf.shape[4:]))
            new[:n] = kept.view(n, buf.shape[1], keep, group, *buf.shape[4:])
            setattr(self, name, new)
        self.sentences, self.group = keep, group
        self.cross_k = self.cross_k.index_select(1, sentences)
        self.cross_v = self.cross_v.index_select(1, sentences)
        if self.cross_mask is not None:
            self.cross_mask = self.cross_mask.index_select(0, sentences)
