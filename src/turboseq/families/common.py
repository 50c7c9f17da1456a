"""Shared pieces of the family mappings: tensor lookup with clear errors, and the usual layer shapes."""

from __future__ import annotations

import torch
from torch import Tensor

from turboseq.spec import CrossAttention, FeedForward, LayerNorm, Linear, SelfAttention


class ModelLoadError(ValueError):
    """A model directory or file that cannot be loaded; the message names the file and the reason."""


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


def _fuse(*linears: Linear) -> Linear:
    weight = torch.cat([lin.weight for lin in linears], dim=0)
    if all(lin.bias is None for lin in linears):
        return Linear(weight, None)
    biases = [lin.bias if lin.bias is not None else torch.zeros(lin.weight.shape[0]) for lin in linears]
    return Linear(weight, torch.cat(biases))


def self_attention(ckpt: Checkpoint, prefix: str, heads: int, names=("q_proj.", "k_proj.", "v_proj.", "out_proj.")):
    q, k, v, o = (ckpt.linear(prefix + n) for n in names)
    return SelfAttention(qkv=_fuse(q, k, v), out=o, num_heads=heads)


def cross_attention(ckpt: Checkpoint, prefix: str, heads: int, names=("q_proj.", "k_proj.", "v_proj.", "out_proj.")):
    q, k, v, o = (ckpt.linear(prefix + n) for n in names)
    return CrossAttention(q=q, kv=_fuse(k, v), out=o, num_heads=heads)


def feed_forward(ckpt: Checkpoint, fc1: str, fc2: str, activation: str) -> FeedForward:
    return FeedForward(ckpt.linear(fc1), ckpt.linear(fc2), activation)


def layer_norm(ckpt: Checkpoint, prefix: str, eps: float = 1e-5) -> LayerNorm:
    return LayerNorm(ckpt.first(prefix + "weight"), ckpt.optional(prefix + "bias"), eps)
