"""Shared pieces of the family mappings: tensor lookup with clear errors, and the usual layer shapes."""

from __future__ import annotations

import torch
from torch import Tensor

from turboseq.errors import ModelLoadError
from turboseq.runtime.spec import (
    CrossAttention,
    DecoderLayer,
    EncoderLayer,
    FeedForward,
    LayerNorm,
    Linear,
    SelfAttention,
)


class Checkpoint:
    """Name -> tensor lookup over a checkpoint, tolerant of the optional ``model.`` prefix."""

    def __init__(self, tensors: dict[str, Tensor], source: str):
        self.tensors = tensors
        self.source = source

    def _find(self, name: str) -> Tensor | None:
        for key in (name, name.removeprefix("model."), "model." + name):
            if key in self.tensors:
                return self.tensors[key]
        return None

    def optional(self, name: str) -> Tensor | None:
        return self._find(name)

    def first(self, *names: str) -> Tensor:
        for name in names:
            t = self._find(name)
            if t is not None:
                return t
        raise ModelLoadError(f"{self.source}: missing weight {' or '.join(names)}")

    def linear(self, prefix: str, bias: bool = True) -> Linear:
        return Linear(self.first(prefix + "weight"), self.optional(prefix + "bias") if bias else None)


def fuse(*linears: Linear) -> Linear:
    weight = torch.cat([lin.weight for lin in linears], dim=0)
    if all(lin.bias is None for lin in linears):
        return Linear(weight, None)
    biases = [lin.bias if lin.bias is not None else torch.zeros(lin.weight.shape[0]) for lin in linears]
    return Linear(weight, torch.cat(biases))


def self_attention(ckpt: Checkpoint, prefix: str, heads: int, names=("q_proj.", "k_proj.", "v_proj.", "out_proj.")):
    q, k, v, o = (ckpt.linear(prefix + n) for n in names)
    return SelfAttention(qkv=fuse(q, k, v), out=o, num_heads=heads)


def cross_attention(ckpt: Checkpoint, prefix: str, heads: int, names=("q_proj.", "k_proj.", "v_proj.", "out_proj.")):
    q, k, v, o = (ckpt.linear(prefix + n) for n in names)
    return CrossAttention(q=q, kv=fuse(k, v), out=o, num_heads=heads)


def feed_forward(ckpt: Checkpoint, fc1: str, fc2: str, activation: str) -> FeedForward:
    return FeedForward(ckpt.linear(fc1), ckpt.linear(fc2), activation)


def layer_norm(ckpt: Checkpoint, prefix: str, eps: float = 1e-5) -> LayerNorm:
    return LayerNorm(ckpt.first(prefix + "weight"), ckpt.optional(prefix + "bias"), eps)


def bart_style_layers(ckpt: Checkpoint, config: dict) -> tuple[list[EncoderLayer], list[DecoderLayer]]:
    """Encoder and decoder layers under BART's weight names (shared by BART, mBART and Marian)."""
    act = config.get("activation_function", "gelu")
    enc_heads, dec_heads = config["encoder_attention_heads"], config["decoder_attention_heads"]
    encoder_layers = []
    for i in range(config["encoder_layers"]):
        p = f"model.encoder.layers.{i}."
        encoder_layers.append(
            EncoderLayer(
                self_attn=self_attention(ckpt, p + "self_attn.", enc_heads),
                self_attn_norm=layer_norm(ckpt, p + "self_attn_layer_norm."),
                ffn=feed_forward(ckpt, p + "fc1.", p + "fc2.", act),
                ffn_norm=layer_norm(ckpt, p + "final_layer_norm."),
            )
        )
    decoder_layers = []
    for i in range(config["decoder_layers"]):
        p = f"model.decoder.layers.{i}."
        decoder_layers.append(
            DecoderLayer(
                self_attn=self_attention(ckpt, p + "self_attn.", dec_heads),
                self_attn_norm=layer_norm(ckpt, p + "self_attn_layer_norm."),
                cross_attn=cross_attention(ckpt, p + "encoder_attn.", dec_heads),
                cross_attn_norm=layer_norm(ckpt, p + "encoder_attn_layer_norm."),
                ffn=feed_forward(ckpt, p + "fc1.", p + "fc2.", act),
                ffn_norm=layer_norm(ckpt, p + "final_layer_norm."),
            )
        )
    return encoder_layers, decoder_layers


def dedup(a: Tensor, b: Tensor) -> Tensor:
    """``b``, or ``a`` itself when the two hold equal values: checkpoints often store one table under several
    names; keep a single copy in memory."""
    return a if b is not a and b.shape == a.shape and torch.equal(a, b) else b
