"""What a transformer is made of, as plain dataclasses of tensors.

Family modules (``turboseq.formats.families.*``) only map checkpoint tensors into these objects; the runtime
(``turboseq.runtime.layers``) decides behaviour from what is present here (a bias or not, pre- or post-norm, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor


@dataclass
class Linear:
    weight: Tensor  # [out_features, in_features]
    bias: Tensor | None = None
    # the family says its inputs carry outliers (T5's FFN output): never int8, bfloat16 in the int8 types
    outliers: bool = False
    # set by ``runtime.compute.prepare``, not part of the mapping: the weight laid out for the product (oneDNN's
    # reordered tensor, or fbgemm's int8 parameters when ``int8``), and the dtype q/k/v leave in
    packed: object = field(default=None, repr=False, compare=False)
    int8: bool = field(default=False, repr=False, compare=False)
    # int8: the scale of each output channel (float32), applied to fbgemm's product (``compute.int8_linear``)
    int8_scale: Tensor | None = field(default=None, repr=False, compare=False)
    out_dtype: torch.dtype | None = field(default=None, repr=False, compare=False)


@dataclass
class LayerNorm:
    weight: Tensor
    bias: Tensor | None
    eps: float = 1e-5
    rms: bool = False  # T5's norm: scale by the root mean square only (no mean subtraction, no bias)


@dataclass
class SelfAttention:
    # fused q, k, v projections: weight [(heads + 2 * kv_heads) * head_dim, d_model]
    qkv: Linear
    out: Linear
    num_heads: int
    scale: float | None = None  # on q.k; None means 1 / sqrt(head_dim) (T5 uses 1.0)
    num_kv_heads: int | None = None  # grouped-query attention: fewer key/value heads than query heads

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self.qkv.weight.shape[0] // (self.num_heads + 2 * self.kv_heads)


@dataclass
class CrossAttention:
    q: Linear
    kv: Linear  # fused k, v projections of the encoder output: weight [2 * inner, d_model]
    out: Linear
    num_heads: int
    scale: float | None = None


@dataclass
class FeedForward:
    fc1: Linear
    fc2: Linear
    activation: str  # "relu" | "gelu" | "silu" ...
    up: Linear | None = None  # gated FFN (T5 v1.1): fc2(act(fc1 x) * up x)
    # gated FFN in one product (Llama's SwiGLU): fc1 holds the gate's rows then the up rows, fc2(act(g) * u)
    glu: bool = False


@dataclass
class EncoderLayer:
    self_attn: SelfAttention
    self_attn_norm: LayerNorm
    ffn: FeedForward
    ffn_norm: LayerNorm


@dataclass
class DecoderLayer:
    self_attn: SelfAttention
    self_attn_norm: LayerNorm
    ffn: FeedForward
    ffn_norm: LayerNorm
    cross_attn: CrossAttention | None = None  # None in a decoder-only stack
    cross_attn_norm: LayerNorm | None = None


@dataclass
class Embeddings:
    tokens: Tensor  # [vocab, d_model]
    scale: float = 1.0  # multiplies token embeddings (sqrt(d_model) where the family scales them)
    positions: Tensor | None = None  # [max_positions, d_model], added after scaling
    norm: LayerNorm | None = None  # layernorm_embedding of BART-style models
    token_type: Tensor | None = None  # [segments, d_model]: BERT's segment embeddings, added before the positions
    # set by ``runtime.compute.prepare``: the LM head's panels when the table is tied to a float32 head (then
    # ``tokens`` is a shape-only stand-in and rows are looked up from them)
    packed: object = field(default=None, repr=False, compare=False)


@dataclass
class Conv1d:
    weight: Tensor  # [out_channels, in_channels, kernel]
    bias: Tensor | None
    stride: int = 1
    padding: int = 0


@dataclass
class AudioFrontEnd:
    """Whisper's encoder input: log-mel frames [batch, mels, frames] through GELU convolutions, then fixed
    positions added (the encoder's counterpart of ``Embeddings``)."""

    convs: list  # list[Conv1d]
    positions: Tensor  # [encoder positions, d_model]


@dataclass
class RelativePositionBias:
    """T5's learned attention bias per (bucketed) query-key distance, shared by all layers of a stack."""

    table: Tensor  # [num_buckets, heads]
    bidirectional: bool  # encoder: distances both ways; decoder: only keys at or before the query
    max_distance: int = 128

    @property
    def num_buckets(self) -> int:
        return self.table.shape[0]


@dataclass
class Rotary:
    """Rotary position embeddings (RoPE) applied to queries and keys: cos/sin per position, computed once
    from the config's rope_theta and scaling (``rotary_tables``)."""

    cos: Tensor  # [max_positions, head_dim]
    sin: Tensor  # [max_positions, head_dim]


@dataclass
class Stack:
    embed: Embeddings | AudioFrontEnd
    layers: list  # list[EncoderLayer] or list[DecoderLayer]
    pre_norm: bool  # pre-norm (x + f(norm(x))) or post-norm (norm(x + f(x)))
    final_norm: LayerNorm | None = None
    relative_bias: RelativePositionBias | None = None
    rotary: Rotary | None = None
    # False in the reduced compute types: decoding attention may take the faster small-query path
    # (``runtime.layers``), whose summation order differs from transformers' SDPA
    exact_attention: bool = True


@dataclass
class Seq2SeqSpec:
    """An encoder-decoder transformer with a language-model head."""

    encoder: Stack
    decoder: Stack
    lm_head: Linear  # [vocab, d_model]; bias holds final_logits_bias where the family has one
    max_positions: int
    vocab_size: int
    pad_token_id: int
    eos_token_id: int
    decoder_start_token_id: int
    head_scale: float = 1.0  # multiplies the decoder output before the LM head (T5 with tied embeddings)
    extra: dict = field(default_factory=dict)

    @property
    def d_model(self) -> int:
        return self.lm_head.weight.shape[1]


@dataclass
class CausalLMSpec:
    """A decoder-only transformer (GPT-2, Llama, ...) with a language-model head."""

    decoder: Stack
    lm_head: Linear  # [vocab, d_model]
    max_positions: int
    vocab_size: int
    pad_token_id: int | None
    eos_token_id: int | list[int] | None
    bos_token_id: int | None
    head_scale: float = 1.0
    extra: dict = field(default_factory=dict)

    @property
    def d_model(self) -> int:
        return self.lm_head.weight.shape[1]


@dataclass
class Pooling:
    """How a sentence vector is made from token states (sentence-transformers' Pooling + Normalize)."""

    mode: str = "mean"  # "mean" | "cls" | "max"
    normalize: bool = False


@dataclass
class Classifier:
    """A sequence-classification head on the first token: ``out(tanh(dense(h_cls)))``."""

    dense: Linear
    out: Linear
    labels: list[str]


@dataclass
class EncoderSpec:
    """An encoder-only transformer (BERT, RoBERTa, XLM-R) with its pooling and optional classifier."""

    encoder: Stack
    max_positions: int
    pad_token_id: int
    pooling: Pooling
    classifier: Classifier | None = None

    @property
    def d_model(self) -> int:
        return self.encoder.embed.tokens.shape[1]


def sinusoidal_positions(num_positions: int, dim: int) -> Tensor:
    """Marian's table: sines in the first half of each vector, cosines in the second (not interleaved).

    Computed in float64 and rounded once, as transformers does, so positions are bit-identical.
    """
    import numpy as np

    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angles = pos / np.power(10000, 2 * (j // 2) / dim)
    out = torch.empty(num_positions, dim, dtype=torch.float32)
    half = math.ceil(dim / 2)
    out[:, :half] = torch.from_numpy(np.sin(angles[:, 0::2])).float()
    out[:, half:] = torch.from_numpy(np.cos(angles[:, 1::2])).float()
    return out


def rotary_tables(head_dim: int, max_positions: int, theta: float, scaling: dict | None = None) -> Rotary:
    """cos/sin tables as transformers computes them: float32 inverse frequencies (``theta ** (2i / dim)``),
    one product per position, the two halves repeated. ``scaling``: the config's rope_scaling ("linear" and
    "llama3" rescale the frequencies; "default" or None leaves them)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = None if not scaling else scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    elif kind not in (None, "default"):
        raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: default, linear, llama3)")
    positions = torch.arange(max_positions, dtype=torch.int64).float()
    freqs = positions[:, None] * inv_freq[None, :]  # [positions, head_dim / 2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return Rotary(emb.cos(), emb.sin())


def map_tensors(obj, fn, _done: dict | None = None):
    """Apply ``fn`` to every tensor inside a spec tree, in place (used for dtype/device moves).

    A tensor shared by several fields (tied embeddings) is converted once and stays shared.
    """
    done = {} if _done is None else _done
    if isinstance(obj, list):
        for item in obj:
            map_tensors(item, fn, done)
        return
    if not hasattr(obj, "__dataclass_fields__"):
        return
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name == "packed":  # derived from the weight after all conversions (``runtime.compute.prepare``)
            continue
        if isinstance(value, Tensor):
            if id(value) not in done:
                done[id(value)] = (value, fn(value))  # keep `value` alive so its id is not reused
            setattr(obj, f.name, done[id(value)][1])
        else:
            map_tensors(value, fn, done)


def parts(obj, kind: type):
    """Every ``kind`` object (``Linear``, ``Embeddings``, ...) inside a spec tree."""
    if isinstance(obj, kind):
        yield obj
    elif isinstance(obj, list):
        for item in obj:
            yield from parts(item, kind)
    elif hasattr(obj, "__dataclass_fields__"):
        for f in fields(obj):
            yield from parts(getattr(obj, f.name), kind)


def linears(obj):
    """Every ``Linear`` inside a spec tree."""
    return parts(obj, Linear)


def stacks(spec) -> list[Stack]:
    """The encoder and/or decoder stack of a spec."""
    return [getattr(spec, name) for name in ("encoder", "decoder") if hasattr(spec, name)]


def shape_problems(spec: Seq2SeqSpec | EncoderSpec | CausalLMSpec) -> list[str]:
    """Where the weights disagree with each other or with the config that shaped the spec (head counts, model
    width): each entry names the part. Empty when every product the runtime will compute fits."""
    problems: list[str] = []

    def expect(what: str, tensor: Tensor | None, shape: tuple) -> None:
        if tensor is not None and tuple(tensor.shape) != shape:
            problems.append(f"{what} has shape {tuple(tensor.shape)}, expected {shape}")

    def norm(what: str, n: LayerNorm | None, d: int) -> None:
        if n is not None:
            expect(f"{what} weight", n.weight, (d,))
            expect(f"{what} bias", n.bias, (d,))

    def stack(name: str, st: Stack, d: int) -> None:
        emb = st.embed
        if isinstance(emb, Embeddings):
            expect(f"{name} token embeddings", emb.tokens, (emb.tokens.shape[0], d))
            if emb.positions is not None:
                expect(f"{name} positions", emb.positions, (emb.positions.shape[0], d))
            norm(f"{name} embedding norm", emb.norm, d)
        else:
            expect(f"{name} positions", emb.positions, (emb.positions.shape[0], d))
        for i, layer in enumerate(st.layers):
            where = f"{name} layer {i}"
            attn = layer.self_attn
            split = attn.num_heads + 2 * attn.kv_heads
            inner = attn.qkv.weight.shape[0] // split * attn.num_heads
            if attn.qkv.weight.shape[0] % split or attn.num_heads % attn.kv_heads:
                problems.append(
                    f"{where} self-attention: {attn.qkv.weight.shape[0]} fused q/k/v rows do not split "
                    f"into {attn.num_heads} query and 2 x {attn.kv_heads} key/value heads"
                )
            expect(f"{where} self-attention q/k/v", attn.qkv.weight, (split * (inner // attn.num_heads), d))
            expect(f"{where} self-attention output", attn.out.weight, (d, inner))
            cross = getattr(layer, "cross_attn", None)
            if cross is not None:
                inner_x = cross.q.weight.shape[0]
                if inner_x % cross.num_heads:
                    problems.append(
                        f"{where} cross-attention: {inner_x} query rows do not split into {cross.num_heads} heads"
                    )
                expect(f"{where} cross-attention q", cross.q.weight, (inner_x, d))
                expect(f"{where} cross-attention k/v", cross.kv.weight, (2 * inner_x, d))
                expect(f"{where} cross-attention output", cross.out.weight, (d, inner_x))
                norm(f"{where} cross-attention norm", layer.cross_attn_norm, d)
            ff = layer.ffn.fc1.weight.shape[0] // (2 if layer.ffn.glu else 1)
            expect(f"{where} feed-forward in", layer.ffn.fc1.weight, ((2 if layer.ffn.glu else 1) * ff, d))
            expect(f"{where} feed-forward out", layer.ffn.fc2.weight, (d, ff))
            if layer.ffn.up is not None:
                expect(f"{where} feed-forward gate", layer.ffn.up.weight, (ff, d))
            norm(f"{where} self-attention norm", layer.self_attn_norm, d)
            norm(f"{where} feed-forward norm", layer.ffn_norm, d)
        norm(f"{name} final norm", st.final_norm, d)
        if st.relative_bias is not None and st.layers:
            heads = st.layers[0].self_attn.num_heads
            expect(f"{name} relative position bias", st.relative_bias.table, (st.relative_bias.num_buckets, heads))

    d = spec.d_model
    if not isinstance(spec, CausalLMSpec):
        stack("encoder", spec.encoder, d)
    if not isinstance(spec, EncoderSpec):
        stack("decoder", spec.decoder, d)
        expect("LM head", spec.lm_head.weight, (spec.lm_head.weight.shape[0], d))
    # the config's position limit must not pass the position table (a longer input would index past it)
    name, st = ("encoder", spec.encoder) if isinstance(spec, EncoderSpec) else ("decoder", spec.decoder)
    table = st.embed.positions if isinstance(st.embed, Embeddings) else None
    if table is not None and table.shape[0] < spec.max_positions:
        problems.append(
            f"{name} positions: the config allows {spec.max_positions} positions, the weights hold {table.shape[0]}"
        )
    return problems
