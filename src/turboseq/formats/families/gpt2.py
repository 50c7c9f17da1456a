"""GPT-2 (small/medium/large/xl, distilgpt2) checkpoints -> ``CausalLMSpec``.

Pre-norm layers with learned positions, Conv1D weights stored [in, out] (transposed here), one fused q/k/v
projection, gelu_new, a final LayerNorm and the LM head tied to the token embeddings.
"""

from __future__ import annotations

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
)

MODEL_TYPES = ("gpt2",)
KIND = ModelKind.CAUSAL


def build(config: dict, ckpt: Checkpoint) -> CausalLMSpec:
    d_model, heads = config["n_embd"], config["n_head"]
    eps = config.get("layer_norm_epsilon", 1e-5)
    act = config.get("activation_function", "gelu_new")

    def first(name: str):
        return ckpt.first("transformer." + name, name)

    def conv1d(prefix: str) -> Linear:  # GPT-2's Conv1D: x @ W + b with W [in, out]
        return Linear(first(prefix + "weight").t(), first(prefix + "bias"))

    def norm(prefix: str) -> LayerNorm:
        return LayerNorm(first(prefix + "weight"), first(prefix + "bias"), eps)

    layers = []
    for i in range(config["n_layer"]):
        p = f"h.{i}."
        scale = None
        if config.get("scale_attn_by_inverse_layer_idx", False) or not config.get("scale_attn_weights", True):
            scale = (d_model // heads) ** -0.5 if config.get("scale_attn_weights", True) else 1.0
            if config.get("scale_attn_by_inverse_layer_idx", False):
                scale /= i + 1
        layers.append(
            DecoderLayer(
                self_attn=SelfAttention(conv1d(p + "attn.c_attn."), conv1d(p + "attn.c_proj."), heads, scale=scale),
                self_attn_norm=norm(p + "ln_1."),
                ffn=FeedForward(conv1d(p + "mlp.c_fc."), conv1d(p + "mlp.c_proj."), act),
                ffn_norm=norm(p + "ln_2."),
            )
        )
    tokens = first("wte.weight")
    head = ckpt.optional("lm_head.weight")
    if head is None or config.get("tie_word_embeddings", True):
        head = tokens
    return CausalLMSpec(
        decoder=Stack(
            Embeddings(tokens, positions=first("wpe.weight")), layers, pre_norm=True, final_norm=norm("ln_f.")
        ),
        lm_head=Linear(head),
        max_positions=config.get("n_positions", config.get("n_ctx", 1024)),
        vocab_size=head.shape[0],
        pad_token_id=config.get("pad_token_id"),
        eos_token_id=config.get("eos_token_id"),
        bos_token_id=config.get("bos_token_id"),
    )
