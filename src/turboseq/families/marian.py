"""MarianMT (opus-mt) checkpoints -> ``Seq2SeqSpec``.

Post-norm layers, sinusoidal positions (not stored in the checkpoint), optional sqrt(d_model) embedding
scale, ``final_logits_bias`` on the LM head, shared or separate source/target embeddings.
"""

from __future__ import annotations

import math

import torch

from turboseq.families.common import Checkpoint, cross_attention, feed_forward, layer_norm, self_attention
from turboseq.spec import DecoderLayer, Embeddings, EncoderLayer, Linear, Seq2SeqSpec, Stack, sinusoidal_positions

MODEL_TYPES = ("marian",)


def build(config: dict, ckpt: Checkpoint) -> Seq2SeqSpec:
    d_model = config["d_model"]
    act = config.get("activation_function", "gelu")
    max_pos = config.get("max_position_embeddings", 1024)
    scale = math.sqrt(d_model) if config.get("scale_embedding", False) else 1.0
    positions = sinusoidal_positions(max_pos, d_model)
    shared = config.get("share_encoder_decoder_embeddings", True)

    # each stack's own table wins; checkpoints with shared embeddings may store only model.shared
    fallback = ("model.shared.weight",) if shared else ()
    src_tokens = ckpt.first("model.encoder.embed_tokens.weight", *fallback)
    tgt_tokens = ckpt.first("model.decoder.embed_tokens.weight", *fallback)
    head = tgt_tokens if config.get("tie_word_embeddings", True) else ckpt.first("lm_head.weight")
    # checkpoints often store one table under several names: keep a single copy in memory
    if tgt_tokens is not src_tokens and torch.equal(tgt_tokens, src_tokens):
        tgt_tokens = src_tokens
    if head is not tgt_tokens and torch.equal(head, tgt_tokens):
        head = tgt_tokens

    enc_heads = config["encoder_attention_heads"]
    dec_heads = config["decoder_attention_heads"]
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
