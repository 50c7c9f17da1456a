"""BART, mBART and PEGASUS checkpoints -> ``Seq2SeqSpec``.

BART: post-norm layers, learned positions stored with an offset of 2, a layer norm on the embeddings.
mBART: the same weights, but pre-norm layers with a final layer norm per stack (target languages are chosen
with ``forced_bos_token_id``). PEGASUS: pre-norm with final norms, Marian-style sinusoidal positions, no
embedding layer norm. All three may scale embeddings by sqrt(d_model) and add ``final_logits_bias``.
"""

from __future__ import annotations

import math

from turboseq.formats.families.common import Checkpoint, bart_style_layers, dedup, layer_norm
from turboseq.runtime.spec import Embeddings, Linear, Seq2SeqSpec, Stack, sinusoidal_positions

MODEL_TYPES = ("bart", "mbart", "pegasus")

# BART's learned position tables start with 2 unused rows (a fairseq convention)
_POSITION_OFFSET = 2


def build(config: dict, ckpt: Checkpoint) -> Seq2SeqSpec:
    model_type = config["model_type"]
    d_model = config["d_model"]
    max_pos = config.get("max_position_embeddings", 1024)
    scale = math.sqrt(d_model) if config.get("scale_embedding", False) else 1.0
    pre_norm = model_type in ("mbart", "pegasus")

    shared = ckpt.optional("model.shared.weight")
    fallback = ("model.shared.weight",) if shared is not None else ()
    src_tokens = ckpt.first("model.encoder.embed_tokens.weight", *fallback)
    tgt_tokens = dedup(src_tokens, ckpt.first("model.decoder.embed_tokens.weight", *fallback))
    stored_head = ckpt.optional("lm_head.weight")
    head = tgt_tokens if config.get("tie_word_embeddings", True) or stored_head is None else stored_head
    head = dedup(tgt_tokens, head)

    def embeddings(stack: str, tokens) -> Embeddings:
        if model_type == "pegasus":
            return Embeddings(tokens, scale, sinusoidal_positions(max_pos, d_model))
        positions = ckpt.first(f"model.{stack}.embed_positions.weight")[_POSITION_OFFSET:]
        return Embeddings(tokens, scale, positions, norm=layer_norm(ckpt, f"model.{stack}.layernorm_embedding."))

    def final_norm(stack: str):
        return layer_norm(ckpt, f"model.{stack}.layer_norm.") if pre_norm else None

    encoder_layers, decoder_layers = bart_style_layers(ckpt, config)
    bias = ckpt.optional("final_logits_bias")
    return Seq2SeqSpec(
        encoder=Stack(embeddings("encoder", src_tokens), encoder_layers, pre_norm, final_norm("encoder")),
        decoder=Stack(embeddings("decoder", tgt_tokens), decoder_layers, pre_norm, final_norm("decoder")),
        lm_head=Linear(head, None if bias is None else bias.reshape(-1)),
        max_positions=max_pos,
        vocab_size=head.shape[0],
        pad_token_id=config["pad_token_id"],
        eos_token_id=config["eos_token_id"],
        decoder_start_token_id=config.get("decoder_start_token_id", config["eos_token_id"]),
    )
