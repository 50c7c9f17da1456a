"""Llama-architecture checkpoints (Llama, SmolLM, TinyLlama; Qwen2 and Mistral map the same way) ->
``CausalLMSpec``.

Pre-norm layers with RMSNorm, rotary positions (the config's rope_theta and rope_scaling), grouped-query
attention (fewer key/value heads than query heads), a SwiGLU FFN, and an LM head of its own or tied to the
token embeddings. Qwen2 has q/k/v biases; Llama has them where ``attention_bias`` says so.
"""

from __future__ import annotations

from turboseq.errors import ModelLoadError
from turboseq.formats.families.common import Checkpoint
from turboseq.kinds import ModelKind
from turboseq.runtime.spec import (
    CausalLMSpec,
    DecoderLayer,
    Embeddings,
    FeedForward,
    LayerNorm,
    Linear,
    SelfAttention,
    Stack,
    rotary_tables,
)

MODEL_TYPES = ("llama", "qwen2", "mistral")
KIND = ModelKind.CAUSAL


def _rope(config: dict) -> tuple[float, dict | None]:
    """(rope_theta, scaling) from a transformers 4 config (rope_theta, rope_scaling) or a 5 one
    (rope_parameters)."""
    params = config.get("rope_parameters")
    if isinstance(params, dict):
        return float(params.get("rope_theta", config.get("rope_theta", 10000.0))), params
    return float(config.get("rope_theta", 10000.0)), config.get("rope_scaling")


def build(config: dict, ckpt: Checkpoint) -> CausalLMSpec:
    d_model, heads = config["hidden_size"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d_model // heads
    eps = config.get("rms_norm_eps", 1e-6)
    act = config.get("hidden_act", "silu")
    max_positions = config.get("max_position_embeddings", 2048)
    window = config.get("sliding_window")
    if window is not None and config.get("use_sliding_window", True) and window < max_positions:
        raise ModelLoadError(
            f"sliding-window attention (window {window} < {max_positions} positions) is not supported yet"
        )
    theta, scaling = _rope(config)
    try:
        rotary = rotary_tables(head_dim, max_positions, theta, scaling)
    except (ValueError, KeyError) as err:
        raise ModelLoadError(f"rope_scaling: {err}") from None

    def norm(prefix: str) -> LayerNorm:
        return LayerNorm(ckpt.first(prefix + "weight"), None, eps, rms=True)

    layers = []
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        q, k, v, o = (ckpt.linear(f"{p}self_attn.{n}_proj.") for n in "qkvo")
        mlp = {n: ckpt.linear(f"{p}mlp.{n}_proj.") for n in ("gate", "up", "down")}
        layers.append(
            DecoderLayer(
                self_attn=SelfAttention(ckpt.fuse(q, k, v), o, heads, num_kv_heads=kv_heads),
                self_attn_norm=norm(p + "input_layernorm."),
                ffn=FeedForward(ckpt.fuse(mlp["gate"], mlp["up"]), mlp["down"], act, glu=True),
                ffn_norm=norm(p + "post_attention_layernorm."),
            )
        )
    tokens = ckpt.first("model.embed_tokens.weight")
    head = ckpt.optional("lm_head.weight")
    if head is None or config.get("tie_word_embeddings", False):
        head = tokens
    return CausalLMSpec(
        decoder=Stack(Embeddings(tokens), layers, pre_norm=True, final_norm=norm("model.norm."), rotary=rotary),
        lm_head=Linear(head),
        max_positions=max_positions,
        vocab_size=head.shape[0],
        pad_token_id=config.get("pad_token_id"),
        eos_token_id=config.get("eos_token_id"),
        bos_token_id=config.get("bos_token_id"),
    )
