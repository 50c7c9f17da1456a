"""Runtime layers: pure functions over the spec (``runtime.spec``).

The encoder runs once per batch. The decoder runs one step at a time against a ``DecoderState``
(``runtime.cache``) holding the preallocated self-attention cache and the cross-attention K/V. The LM head
is ``runtime.head``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from turboseq.runtime.compute import int8_linear
from turboseq.runtime.packed import Panels
from turboseq.runtime.spec import (
    AudioFrontEnd,
    Embeddings,
    FeedForward,
    LayerNorm,
    Linear,
    RelativePositionBias,
    SelfAttention,
    Seq2SeqSpec,
    Stack,
)


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "silu": F.silu,
    "swish": F.silu,
}


# activations oneDNN can apply inside the matmul: name -> (post-op, algorithm); results equal the separate
# torch function up to an ulp or so
_FUSED = {
    "relu": ("relu", ""),
    "gelu": ("gelu", "none"),
    "gelu_new": ("gelu", "tanh"),
    "gelu_pytorch_tanh": ("gelu", "tanh"),
    "silu": ("swish", ""),
    "swish": ("swish", ""),
}


def linear(x: Tensor, lin: Linear, activation: str | None = None) -> Tensor:
    """``activation(x @ W.T + b)`` in the linear's precision (``runtime.compute``): one fused oneDNN call when
    the weight is prepacked, fbgemm's int8 product when it is quantized. The input is cast to the weight's
    precision; q/k/v projections leave in ``lin.out_dtype``."""
    fused = False
    if lin.int8:
        y = int8_linear(x, lin)
    elif isinstance(lin.packed, Panels):
        y = lin.packed.matmul(x, lin.bias)
    else:
        if x.dtype != lin.weight.dtype:
            x = x.to(lin.weight.dtype)
        if lin.packed is not None:
            post_op, algorithm = _FUSED.get(activation, ("none", ""))
            y = torch.ops.mkldnn._linear_pointwise(x, lin.packed, lin.bias, post_op, [], algorithm)
            fused = activation in _FUSED
        else:
            y = F.linear(x, lin.weight, lin.bias)
    if activation is not None and not fused:
        y = ACTIVATIONS[activation](y)
    return y if lin.out_dtype is None else y.to(lin.out_dtype)


def layer_norm(x: Tensor, norm: LayerNorm) -> Tensor:
    if norm.rms:
        # T5's arithmetic: float32 mean of squares, then the weight (in its own dtype) times the result
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return norm.weight * (x * torch.rsqrt(variance + norm.eps)).to(norm.weight.dtype)
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def feed_forward(x: Tensor, ffn: FeedForward) -> Tensor:
    if ffn.glu:
        gate, up = linear(x, ffn.fc1).chunk(2, dim=-1)
        return linear(ACTIVATIONS[ffn.activation](gate) * up, ffn.fc2)
    h = linear(x, ffn.fc1, ffn.activation)
    if ffn.up is not None:
        h = h * linear(x, ffn.up)
    return linear(h, ffn.fc2)


def _relative_buckets(relative: Tensor, bias: RelativePositionBias) -> Tensor:
    """T5's bucketing of key - query distances: exact below half the buckets, logarithmic up to
    ``max_distance``; bidirectional stacks spend half of the buckets on each direction."""
    num_buckets = bias.num_buckets
    buckets = torch.zeros_like(relative)
    if bias.bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = -torch.clamp(relative, max=0)
    max_exact = num_buckets // 2
    large = (
        max_exact
        + (
            torch.log(distance.float() / max_exact)
            / math.log(bias.max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


def relative_position_bias(bias: RelativePositionBias, query_start: int, query_len: int, key_len: int) -> Tensor:
    """Bias [1, heads, query_len, key_len] for queries at positions query_start.. and keys at 0..key_len-1."""
    device = bias.table.device
    queries = torch.arange(query_start, query_start + query_len, device=device)[:, None]
    keys = torch.arange(key_len, device=device)[None, :]
    # [query_len, key_len, heads] -> [1, heads, query_len, key_len]
    return F.embedding(_relative_buckets(keys - queries, bias), bias.table).permute(2, 0, 1)[None]


def embed(
    emb: Embeddings, ids: Tensor, start: int = 0, positions: Tensor | None = None, segments: Tensor | None = None
) -> Tensor:
    """Token embeddings (scaled) plus positions ``start .. start + len - 1`` for ids [batch, len], or plus
    the given ``positions`` (one per id, any shape: packed sequences). ``segments`` (one per id) pick BERT's
    segment embeddings (a sentence pair's second text is segment 1); without them every id is segment 0."""
    if emb.packed is not None:  # tied to a float32 LM head, held in its panels
        x = emb.packed.take(ids)
    else:
        x = F.embedding(ids, emb.tokens).float()  # reduced compute types store the table in bfloat16
    if emb.scale != 1.0:
        x = x * emb.scale
    if emb.token_type is not None:
        x = x + (emb.token_type[0] if segments is None else emb.token_type[segments])
    if emb.positions is not None:
        x = x + (emb.positions[positions] if positions is not None else emb.positions[start : start + ids.shape[1]])
    if emb.norm is not None:
        x = layer_norm(x, emb.norm)
    return x


def embed_audio(front: AudioFrontEnd, features: Tensor) -> Tensor:
    """Log-mel features [batch, mels, frames] -> [batch, positions, d_model]."""
    x = features
    for conv in front.convs:
        x = F.gelu(F.conv1d(x, conv.weight, conv.bias, stride=conv.stride, padding=conv.padding))
    x = x.transpose(1, 2)
    return x + front.positions[: x.shape[1]]


def _sublayer(x: Tensor, norm: LayerNorm, pre_norm: bool, fn) -> Tensor:
    if pre_norm:
        return x + fn(layer_norm(x, norm))
    return layer_norm(x + fn(x), norm)


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """[batch, len, d_model] -> [batch, heads, len, head_dim]"""
    b, t, d = x.shape
    return x.view(b, t, num_heads, d // num_heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """[batch, heads, len, head_dim] -> [batch, len, d_model]"""
    b, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, h * hd)


def _split_qkv(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Fused projection [batch, len, 3 * d_model] -> q, k, v each [batch, heads, len, head_dim]."""
    b, t, d3 = qkv.shape
    qkv = qkv.view(b, t, 3, num_heads, d3 // (3 * num_heads)).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def encode(stack: Stack, inputs: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Run an encoder stack on a padded batch of token ids [batch, src_len] (or, for an audio front end,
    log-mel features [batch, mels, frames] with no mask); returns hidden states [batch, src_len, d_model]."""
    if isinstance(stack.embed, AudioFrontEnd):
        x = embed_audio(stack.embed, inputs)
    else:
        x = embed(stack.embed, inputs)
    # [batch, 1, 1, src_len]: True where a key may be attended
    mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
    if stack.relative_bias is not None:
        # computed once per batch, shared by every layer: [batch, heads, src_len, src_len]
        src_len = inputs.shape[1]
        bias = relative_position_bias(stack.relative_bias, 0, src_len, src_len).to(x.dtype)
        mask = bias.masked_fill(~mask, -math.inf)
    for layer in stack.layers:

        def self_attention(h, attn: SelfAttention = layer.self_attn):
            q, k, v = _split_qkv(linear(h, attn.qkv), attn.num_heads)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
            return linear(_merge_heads(out), attn.out)

        x = _sublayer(x, layer.self_attn_norm, stack.pre_norm, self_attention)
        x = _sublayer(x, layer.ffn_norm, stack.pre_norm, lambda h, f=layer.ffn: feed_forward(h, f))
    if stack.final_norm is not None:
        x = layer_norm(x, stack.final_norm)
    return x


def _length_groups(lengths: Tensor) -> list[Tensor]:
    """Sequence indices grouped so that within a group the longest is at most twice the shortest."""
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    values = lengths.tolist()
    groups, current = [], [order[0]]
    for i in order[1:]:
        if 2 * values[i] < values[current[0]]:
            groups.append(current)
            current = []
        current.append(i)
    groups.append(current)
    return [torch.tensor(g, device=lengths.device) for g in groups]


def encode_packed(stack: Stack, tokens: Tensor, lengths: Tensor, segments: Tensor | None = None) -> Tensor:
    """Run an encoder stack on sequences packed end to end (no padding); returns [total_tokens, d_model].

    ``tokens`` [total] holds the sequences one after the other, ``lengths`` [batch] their lengths. Embeddings,
    projections, FFNs and norms run on the packed tokens only. For attention, sequences are grouped by
    length (longest at most twice the shortest in a group) and each group's q/k/v are scattered into a
    padded [group, heads, longest, head_dim] layout for one SDPA call with a key mask. On mixed batches (short
    sentences plus a long paragraph) that beats one padded SDPA call for the whole batch, whose attention the
    long rows dominate (README: encoder benchmark).
    Absolute positions restart at 0 for every sequence (no relative position bias). ``segments`` [total]: BERT's
    segment of each token (``embed``).
    """
    device = tokens.device
    starts = torch.cumsum(lengths, 0) - lengths
    seq = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)  # [total]
    pos = torch.arange(tokens.numel(), device=device) - starts[seq]
    # per group: (packed token indices, their slots in the group's padded layout, group size, longest, key mask)
    plans = []
    for group in _length_groups(lengths):
        glen = lengths[group]
        longest = int(glen.max())
        rank = torch.empty_like(lengths)
        rank[group] = torch.arange(group.numel(), device=device)
        member = torch.zeros_like(lengths, dtype=torch.bool)
        member[group] = True
        token_idx = member[seq].nonzero().squeeze(1)
        slots = rank[seq[token_idx]] * longest + pos[token_idx]
        key_mask = (torch.arange(longest, device=device)[None, :] < glen[:, None])[:, None, None, :]
        plans.append((token_idx, slots, group.numel(), longest, key_mask))
    x = embed(stack.embed, tokens, positions=pos, segments=segments)
    for layer in stack.layers:

        def self_attention(h, attn: SelfAttention = layer.self_attn):
            qkv = linear(h, attn.qkv)  # [total, 3 * inner]
            out = qkv.new_empty(qkv.shape[0], qkv.shape[1] // 3)
            for token_idx, slots, size, longest, key_mask in plans:
                padded = qkv.new_zeros(size * longest, qkv.shape[1])
                padded[slots] = qkv[token_idx]
                q, k, v = _split_qkv(padded.view(size, longest, -1), attn.num_heads)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=attn.scale)
                out[token_idx] = _merge_heads(o).reshape(size * longest, -1)[slots]
            return linear(out, attn.out)

        x = _sublayer(x, layer.self_attn_norm, stack.pre_norm, self_attention)
        x = _sublayer(x, layer.ffn_norm, stack.pre_norm, lambda h, f=layer.ffn: feed_forward(h, f))
    if stack.final_norm is not None:
        x = layer_norm(x, stack.final_norm)
    return x


def encode_unpadded(stack: Stack, ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``encode`` of a right-padded batch of token ids [batch, src_len] with the padding left out of every dense
    layer (``encode_packed``): hidden states [batch, src_len, d_model], zeros at the padded positions, which a
    key mask hides from cross-attention. A batch without padding, with left padding or an empty row, or a
    stack with a relative position bias (T5's, computed over the padded length) runs ``encode`` as it is."""
    batch, src_len = ids.shape
    lengths = attention_mask.sum(dim=1)
    right_padded = attention_mask == (torch.arange(src_len, device=ids.device) < lengths[:, None])
    if (
        stack.relative_bias is not None
        or isinstance(stack.embed, AudioFrontEnd)
        or int(lengths.min()) in (0, src_len)
        or not bool(right_padded.all())
    ):
        return encode(stack, ids, attention_mask)
    keep = attention_mask.bool()
    hidden = encode_packed(stack, ids[keep], lengths)  # [real tokens, d_model]
    out = hidden.new_zeros(batch, src_len, hidden.shape[-1])
    out[keep] = hidden
    return out


def build_cross_kv(spec: Seq2SeqSpec, encoder_out: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Project the encoder output once into every decoder layer's cross-attention keys and values.

    One entry per sentence, never per beam: all beams of a sentence attend to the same tensors.
    """
    kv = []
    b, s, _ = encoder_out.shape
    for layer in spec.decoder.layers:
        attn = layer.cross_attn
        # [2, batch, heads, src_len, head_dim]
        both = linear(encoder_out, attn.kv).view(b, s, 2, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        kv.append((both[0].contiguous(), both[1].contiguous()))
    return kv
