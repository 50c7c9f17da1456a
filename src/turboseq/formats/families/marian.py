"""MarianMT (opus-mt) checkpoints -> ``Seq2SeqSpec``.

Post-norm layers, sinusoidal positions (not stored in the checkpoint), optional sqrt(d_model) embedding
scale, ``final_logits_bias`` on the LM head, shared or separate source/target embeddings.
"""

from __future__ import annotations

import math

from turboseq.formats.families.common import Checkpoint, bart_style_layers, dedup
from turboseq.runtime.spec import Embeddings, Linear, Seq2SeqSpec, Stack, sinusoidal_positions

MODEL_TYPES = ("marian",)


def build(config: dict, ckpt: Checkpoint) -> Seq2SeqSpec:
    d_model = config["d_model"]
    max_pos = config.get("max_position_embeddings", 1024)
    scale = math.sqrt(d_model) if config.get("scale_embedding", False) else 1.0
    positions = sinusoidal_positions(max_pos, d_model)
    shared = config.get("share_encoder_decoder_embeddings", True)

    # each stack's own table wins; checkpoints with shared embeddings may store only model.shared
    fallback = ("model.shared.weight",) if shared else ()
    src_tokens = ckpt.first("model.encoder.embed_tokens.weight", *fallback)
    tgt_tokens = ckpt.first("model.decoder.embed_tokens.weight", *fallback)
    head = tgt_tokens if config.get("tie_word_embeddings", True) else ckpt.first("lm_head.weight")
    tgt_tokens = dedup(src_tokens, tgt_tokens)
    head = dedup(tgt_tokens, head)

    encoder_layers, decoder_layers = bart_style_layers(ckpt, config)
    bias = ckpt.optional("final_logits_bias")
    return Seq2SeqSpec(
        encoder=Stack(Embeddings(src_tokens, scale, positions), encoder_layers, pre_norm=False),
        decoder=Stack(Embeddings(tgt_tokens, scale, positions), decoder_layers, pre_norm=False),
        lm_head=Linear(head, None if bias is None else bias.reshape(-1)),
        max_positions=max_pos,
        vocab_size=head.shape[0],
        pad_token_id=config["pad_token_id"],
        eos_token_id=config["eos_token_id"],
        decoder_start_token_id=config.get("decoder_start_token_id", config["pad_token_id"]),
    )
