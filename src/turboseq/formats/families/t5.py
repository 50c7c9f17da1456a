"""T5 (v1.0), T5 v1.1 / flan-T5 and mT5 checkpoints -> ``Seq2SeqSpec``.

Pre-norm layers with T5's RMS norm, no biases, no 1/sqrt(d) attention scaling, a relative position bias
learned in the first layer of each stack and shared by all its layers, no position embeddings. v1.0 has a
ReLU FFN and rescales the decoder output by d_model**-0.5 before the tied LM head; v1.1 has a gated-GELU FFN
and its own LM head.
"""

from __future__ import annotations

from turboseq.errors import ModelLoadError
from turboseq.formats.families.common import Checkpoint
from turboseq.runtime.spec import (
    CrossAttention,
    DecoderLayer,
    Embeddings,
    EncoderLayer,
    FeedForward,
    LayerNorm,
    Linear,
    RelativePositionBias,
    SelfAttention,
    Seq2SeqSpec,
    Stack,
)

MODEL_TYPES = ("t5", "mt5")


def _activation(config: dict) -> tuple[str, bool]:
    """(activation name, gated) from ``feed_forward_proj`` ("relu", "gated-gelu", "gated-silu", ...)."""
    proj = config.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ModelLoadError(f"unsupported feed_forward_proj {proj!r} (expected ACT or gated-ACT)")
    # transformers maps "gated-gelu" to the tanh approximation for backward compatibility
    return ("gelu_new" if proj == "gated-gelu" else parts[-1]), parts[0] == "gated"


class _Blocks:
    """T5's blocks read from a checkpoint: norms, attentions, feed-forwards, relative position biases."""

    def __init__(self, config: dict, ckpt: Checkpoint):
        self.config, self.ckpt = config, ckpt
        self.heads = config["num_heads"]
        self.eps = config.get("layer_norm_epsilon", 1e-6)
        self.act, self.gated = _activation(config)

    def norm(self, prefix: str) -> LayerNorm:
        return LayerNorm(self.ckpt.first(prefix + "weight"), None, self.eps, rms=True)

    def attention(self, prefix: str, cross: bool):
        q, k, v, o = (self.ckpt.linear(f"{prefix}{n}.", bias=False) for n in "qkvo")
        if cross:
            return CrossAttention(q=q, kv=self.ckpt.fuse(k, v), out=o, num_heads=self.heads, scale=1.0)
        return SelfAttention(qkv=self.ckpt.fuse(q, k, v), out=o, num_heads=self.heads, scale=1.0)

    def ffn(self, prefix: str) -> FeedForward:
        p, ckpt = prefix + "DenseReluDense.", self.ckpt
        out = ckpt.linear(p + "wo.", bias=False)
        # its inputs carry outliers far beyond the other activations (transformers keeps `wo` in float32 for
        # the same reason): never int8 (``runtime.compute``)
        out.outliers = True
        if self.gated:
            return FeedForward(
                ckpt.linear(p + "wi_0.", bias=False), out, self.act, up=ckpt.linear(p + "wi_1.", bias=False)
            )
        return FeedForward(ckpt.linear(p + "wi.", bias=False), out, self.act)

    def bias(self, stack: str, bidirectional: bool) -> RelativePositionBias:
        table = self.ckpt.first(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        return RelativePositionBias(table, bidirectional, self.config.get("relative_attention_max_distance", 128))

    def encoder_layer(self, i: int) -> EncoderLayer:
        p = f"encoder.block.{i}.layer."
        return EncoderLayer(
            self_attn=self.attention(p + "0.SelfAttention.", cross=False),
            self_attn_norm=self.norm(p + "0.layer_norm."),
            ffn=self.ffn(p + "1."),
            ffn_norm=self.norm(p + "1.layer_norm."),
        )

    def decoder_layer(self, i: int) -> DecoderLayer:
        p = f"decoder.block.{i}.layer."
        return DecoderLayer(
            self_attn=self.attention(p + "0.SelfAttention.", cross=False),
            self_attn_norm=self.norm(p + "0.layer_norm."),
            cross_attn=self.attention(p + "1.EncDecAttention.", cross=True),
            cross_attn_norm=self.norm(p + "1.layer_norm."),
            ffn=self.ffn(p + "2."),
            ffn_norm=self.norm(p + "2.layer_norm."),
        )


def build(config: dict, ckpt: Checkpoint) -> Seq2SeqSpec:
    blocks = _Blocks(config, ckpt)
    shared = ckpt.first("shared.weight", "encoder.embed_tokens.weight")
    src_tokens = ckpt.optional("encoder.embed_tokens.weight")
    tgt_tokens = ckpt.optional("decoder.embed_tokens.weight")
    src_tokens = shared if src_tokens is None else src_tokens
    tgt_tokens = shared if tgt_tokens is None else tgt_tokens
    # like transformers: a stored lm_head is used as is; without one the head is the shared embedding
    head = ckpt.optional("lm_head.weight")
    head = shared if head is None else head
    rescale = config.get("scale_decoder_outputs", config.get("tie_word_embeddings", True) is not False)
    encoder_layers = [blocks.encoder_layer(i) for i in range(config["num_layers"])]
    decoder_layers = [blocks.decoder_layer(i) for i in range(config.get("num_decoder_layers") or config["num_layers"])]
    pad = config.get("pad_token_id", 0)
    return Seq2SeqSpec(
        encoder=Stack(
            Embeddings(src_tokens),
            encoder_layers,
            pre_norm=True,
            final_norm=blocks.norm("encoder.final_layer_norm."),
            relative_bias=blocks.bias("encoder", bidirectional=True),
        ),
        decoder=Stack(
            Embeddings(tgt_tokens),
            decoder_layers,
            pre_norm=True,
            final_norm=blocks.norm("decoder.final_layer_norm."),
            relative_bias=blocks.bias("decoder", bidirectional=False),
        ),
        lm_head=Linear(head),
        # relative positions have no hard limit; n_positions is the length T5 was trained for
        max_positions=config.get("n_positions", 512),
        vocab_size=head.shape[0],
        pad_token_id=pad,
        eos_token_id=config.get("eos_token_id", 1),
        decoder_start_token_id=config.get("decoder_start_token_id", pad),
        head_scale=config["d_model"] ** -0.5 if rescale else 1.0,
    )
