"""Shared pieces of the family mappings: tensor lookup with clear errors, and the usual layer shapes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from turboseq.errors import ModelLoadError
from turboseq.formats.hf import release_pages
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
    """Name -> tensor lookup over a checkpoint, tolerant of the optional ``model.`` prefix.

    ``lay_out``, when the loader gives one, takes each fused linear as soon as it is made (converted or
    packed for the compute type), so the float32 copies that fusing makes never pile up during a load."""

    def __init__(self, tensors: dict[str, Tensor], source: str, lay_out: Callable[[Linear], None] | None = None):
        self.tensors = tensors
        self.source = source
        self.lay_out = lay_out

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

    def fuse(self, *linears: Linear) -> Linear:
        """One linear computing ``linears`` side by side (their output rows stacked: q/k/v, gate/up)."""
        weight = _cat([lin.weight for lin in linears])
        if all(lin.bias is None for lin in linears):
            fused = Linear(weight, None)
        else:
            biases = [lin.bias if lin.bias is not None else torch.zeros(lin.weight.shape[0]) for lin in linears]
            fused = Linear(weight, _cat(biases))
        for lin in linears:
            release_pages(lin.weight)  # copied into the fused weight: the file's pages are not needed now
        if self.lay_out is not None:
            self.lay_out(fused)
        return fused


def _cat(parts: list[Tensor]) -> Tensor:
    if any(t.device.type == "meta" for t in parts):
        # shapes only (a converted directory); torch.cat on meta tensors would import torch's compiler (1.5 s)
        rows = sum(t.shape[0] for t in parts)
        return torch.empty((rows, *parts[0].shape[1:]), dtype=parts[0].dtype, device="meta")
    return torch.cat(parts, dim=0)


def self_attention(ckpt: Checkpoint, prefix: str, heads: int, names=("q_proj.", "k_proj.", "v_proj.", "out_proj.")):
    q, k, v, o = (ckpt.linear(prefix + n) for n in names)
    return SelfAttention(qkv=ckpt.fuse(q, k, v), out=o, num_heads=heads)


def cross_attention(ckpt: Checkpoint, prefix: str, heads: int, names=("q_proj.", "k_proj.", "v_proj.", "out_proj.")):
    q, k, v, o = (ckpt.linear(prefix + n) for n in names)
    return CrossAttention(q=q, kv=ckpt.fuse(k, v), out=o, num_heads=heads)


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
    if b is a or b.shape != a.shape or "meta" in (a.device.type, b.device.type):
        return b  # shapes only (a converted directory: its file says what is shared)
    return a if torch.equal(a, b) else b
