"""The decoder step: new tokens through the decoder against a ``DecoderState`` (``runtime.cache``).

``decode_step`` feeds one state's rows; ``decode_together`` feeds one token per row to several independent
states at once (the requests that joined a running batch, ``generation.joining``): the dense layers (the
projections and the feed-forward) run once over every row, and each state's attention runs over its own cache and
its own encoder K/V, exactly as when it decodes alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from turboseq.runtime.cache import DecoderState
from turboseq.runtime.cpu import Capability, at_least
from turboseq.runtime.layers import (
    _merge_heads,
    _sublayer,
    embed,
    feed_forward,
    layer_norm,
    linear,
    relative_position_bias,
)
from turboseq.runtime.spec import CausalLMSpec, SelfAttention, Seq2SeqSpec

# below this many query rows oneDNN's flash kernel is faster than two batched products
_SMALL_QUERY_MIN_ROWS = 8


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None, exact: bool) -> Tensor:
    """Attention of q [batch, heads, queries, head_dim] over k, v [batch, heads, keys, head_dim] (``mask``: bool,
    True = attend, or an additive bias). SDPA's CPU flash kernel, except for bfloat16 attention on a CPU without
    AMX at one decoded position over many rows: there two batched products around a float32 softmax are faster
    (3-4x on AVX-512 Zen 4), while with AMX tiles the flash kernel is 1.7x faster (opus-mt shape, 64 rows:
    whole decoding +10-16% in bfloat16, +5-11% with int8's float32 attention)."""
    if (
        exact
        or q.dtype != torch.bfloat16
        or q.shape[0] * q.shape[2] < _SMALL_QUERY_MIN_ROWS
        or at_least(Capability.AMX)
    ):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2)).float()
    scores *= scale if scale is not None else q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on x [rows, len, heads, head_dim] with cos/sin [rows or 1, len, 1, head_dim], as transformers'
    ``apply_rotary_pos_emb`` computes it."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@dataclass
class _Part:
    """One state's rows in a step: its self-attention mask (None: none) and whether SDPA applies causality, and
    its rotary cos/sin (None: no rotary embedding)."""

    state: DecoderState
    rows: int
    new_len: int
    mask: Tensor | None
    causal: bool
    cos: Tensor | None
    sin: Tensor | None


def decode_step(
    spec: Seq2SeqSpec | CausalLMSpec, state: DecoderState, tokens: Tensor, all_positions: bool = False
) -> Tensor:
    """Feed ``tokens`` [rows, new_len] to the decoder; returns the last position's hidden state [rows, d_model]
    (the input of the LM head, ``runtime.head.LMHead``), or with ``all_positions`` every position's
    [rows, new_len, d_model] (teacher forcing).

    Encoder-decoder: rows are grouped by sentence (``state.group`` consecutive rows per sentence, e.g. the
    beams); the cross-attention of a sentence runs once for all of its rows, with the rows as the query axis.
    Decoder-only: the first call is the prompt (prefill), left-padded rows masked and positioned by
    ``state``; layers without cross-attention skip it.
    """
    return _decode(spec, [(state, tokens)], all_positions)


def decode_together(spec: Seq2SeqSpec | CausalLMSpec, states: list[DecoderState], tokens: list[Tensor]) -> Tensor:
    """``decode_step`` of one new token per row ([rows_i, 1] for ``states[i]``) for several states at once:
    the hidden states of every state's rows, concatenated in order [sum rows_i, d_model]. Each state's
    attention is its own; only the dense layers are shared."""
    if any(t.shape[1] != 1 for t in tokens):
        raise ValueError("decode_together feeds one new token per row")
    return _decode(spec, list(zip(states, tokens)), False)


def _decode(spec, feeds: list[tuple[DecoderState, Tensor]], all_positions: bool) -> Tensor:
    stack = spec.decoder
    parts, xs = [], []
    for state, tokens in feeds:
        new_len = tokens.shape[1]
        start = state.length
        state.reserve(start + new_len)
        positions = state.positions(new_len)  # [rows, new_len] or None: start ..
        x = embed(stack.embed, tokens, start, positions)  # [rows, new_len, d_model]
        mask, causal = _self_mask(stack, state, start, new_len, x)
        cos = sin = None
        if stack.rotary is not None:
            where = positions if positions is not None else torch.arange(start, start + new_len, device=x.device)[None]
            cos, sin = stack.rotary.cos[where][:, :, None], stack.rotary.sin[where][:, :, None]
        parts.append(_Part(state, tokens.shape[0], new_len, mask, causal, cos, sin))
        xs.append(x)
    x = xs[0] if len(xs) == 1 else torch.cat(xs)
    exact = stack.exact_attention
    for i, layer in enumerate(stack.layers):
        x = _sublayer(
            x, layer.self_attn_norm, stack.pre_norm,
            lambda h, a=layer.self_attn, i=i: _cached_self_attention(h, a, parts, i, exact),
        )  # fmt: skip
        if layer.cross_attn is not None:
            x = _sublayer(
                x, layer.cross_attn_norm, stack.pre_norm,
                lambda h, a=layer.cross_attn, i=i: _cross_attention(h, a, parts, i, exact),
            )  # fmt: skip
        x = _sublayer(x, layer.ffn_norm, stack.pre_norm, lambda h, f=layer.ffn: feed_forward(h, f))
    for part in parts:
        part.state.length += part.new_len
    if not all_positions:
        x = x[:, -1]
    if stack.final_norm is not None:
        x = layer_norm(x, stack.final_norm)
    if spec.head_scale != 1.0:
        x = x * spec.head_scale
    return x


def _self_mask(stack, state: DecoderState, start: int, new_len: int, x: Tensor) -> tuple[Tensor | None, bool]:
    """The self-attention mask of the next ``new_len`` queries (None: none) and whether SDPA applies causality
    itself (a multi-token prompt into an empty cache)."""
    end = start + new_len
    mask = state.self_mask(new_len)
    causal = mask is None and bool(new_len > 1)
    if stack.relative_bias is not None:
        # only the new positions' rows of the bias, from the cache length: [1, heads, new_len, end]
        mask = relative_position_bias(stack.relative_bias, start, new_len, end).to(x.dtype)
        if causal:
            mask = mask.masked_fill(
                torch.ones(new_len, end, dtype=torch.bool, device=x.device).triu(start + 1), -math.inf
            )
            causal = False
    return mask, causal


def _split(x: Tensor, parts: list[_Part]) -> list[Tensor]:
    """x's rows, per part."""
    if len(parts) == 1:
        return [x]
    return list(torch.split(x, [p.rows for p in parts]))


def _cached_self_attention(h: Tensor, attn: SelfAttention, parts: list[_Part], i: int, exact: bool) -> Tensor:
    """Layer ``i``'s self-attention of the new positions ``h`` [rows, new_len, d_model] over each part's cache,
    their keys and values written to it."""
    rows, new_len = h.shape[0], h.shape[1]
    heads, kv_heads = attn.num_heads, attn.kv_heads
    # [rows, new_len, heads + 2 * kv_heads, head_dim]: k and v go to the cache in this layout
    qkv = linear(h, attn.qkv).view(rows, new_len, heads + 2 * kv_heads, -1)
    outs = [_attend_cached(part_qkv, attn, part, i, exact) for part_qkv, part in zip(_split(qkv, parts), parts)]
    return linear(_merge_heads(outs[0] if len(outs) == 1 else torch.cat(outs)), attn.out)


def _attend_cached(qkv: Tensor, attn: SelfAttention, part: _Part, i: int, exact: bool) -> Tensor:
    """One part's attention output [rows, heads, new_len, head_dim] from its projections ``qkv``."""
    new_len, heads, kv_heads = qkv.shape[1], attn.num_heads, attn.kv_heads
    qk, v = qkv[:, :, : heads + kv_heads], qkv[:, :, heads + kv_heads :]
    if part.cos is not None:  # queries and keys rotated together (in float32, back to the cache's dtype)
        qk = _rotate(qk, part.cos, part.sin).to(v.dtype)
    q, k = qk[:, :, :heads], qk[:, :, heads:]
    keys, values = part.state.write(i, k, v)
    if new_len == 1 and kv_heads == heads:
        return _attend(q.transpose(1, 2), keys, values, part.mask, attn.scale, exact)
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), keys, values, attn_mask=part.mask, is_causal=part.causal, scale=attn.scale,
        enable_gqa=kv_heads != heads,
    )  # fmt: skip


def _cross_attention(h: Tensor, attn, parts: list[_Part], i: int, exact: bool) -> Tensor:
    """Layer ``i``'s cross-attention of ``h`` [rows, new_len, d_model] over each sentence's encoder K/V."""
    new_len = h.shape[1]
    q_all = linear(h, attn.q)
    outs = []
    for q, part in zip(_split(q_all, parts), parts):
        state = part.state
        cross_k, cross_v = state.cross_kv[i]
        sentences, heads, _, head_dim = cross_k.shape
        # [sentences, heads, group * new_len, head_dim]: the beams of a sentence share its keys/values
        q = q.view(sentences, state.group * new_len, heads, head_dim).transpose(1, 2)
        out = _attend(q, cross_k, cross_v, state.cross_mask, attn.scale, exact)
        if state.capture is not None and i in state.capture:
            picked = state.capture[i]
            scale = attn.scale if attn.scale is not None else head_dim**-0.5
            state.captured.append((q[:, picked] @ cross_k[:, picked].transpose(-1, -2)).float() * scale)
        outs.append(out.transpose(1, 2).reshape(part.rows, new_len, heads * head_dim))
    return linear(outs[0] if len(outs) == 1 else torch.cat(outs), attn.out)
