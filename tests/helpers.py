"""Builders for small random-init models saved as real Hugging Face directories."""

from __future__ import annotations

import torch

MARIAN_BASE = dict(
    vocab_size=128,
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    max_position_embeddings=128,
    activation_function="swish",
    scale_embedding=True,
    pad_token_id=127,
    eos_token_id=0,
    decoder_start_token_id=127,
    forced_eos_token_id=0,
)


def make_marian(
    path, seed: int = 0, std: float = 0.5, emb_std: float = 0.5, eos_rate: float = 0.08,
    generation: dict | None = None, **overrides
):
    """A MarianMTModel with weights drawn at ``std`` (large enough that top-2 logits are far apart; the
    default 0.02 init gives near-uniform logits whose ties flip with any change of summation order)."""
    from transformers import GenerationConfig, MarianConfig, MarianMTModel

    cfg = dict(MARIAN_BASE)
    cfg.update(overrides)
    config = MarianConfig(**cfg)
    torch.manual_seed(seed)
    model = MarianMTModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:
                continue  # fixed sinusoidal table
            if "layer_norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            elif "embed_tokens" in name or "shared" in name or "lm_head" in name:
                p.normal_(0.0, emb_std)
            else:
                p.normal_(0.0, std / (p.shape[-1] ** 0.5) * 4 if p.dim() == 2 else std * 0.2)
        model.final_logits_bias.normal_(0.0, 0.5)
        if eos_rate:
            # Random models rarely pick EOS, or pick it at once. Shift EOS's bias so that it is the top token
            # at about `eos_rate` of the steps of a probe batch: sentences then end at varied lengths.
            eos = cfg["eos_token_id"]
            probe = torch.randint(1, cfg["vocab_size"] - 1, (16, 12), generator=torch.Generator().manual_seed(seed))
            dec = model.generate(probe, max_length=24, min_length=24, num_beams=1, do_sample=False)[:, :-1]
            logits = model(input_ids=probe, decoder_input_ids=dec).logits
            others = logits.clone()
            others[..., eos] = -float("inf")
            gap = (others.max(-1).values - logits[..., eos]).flatten()
            model.final_logits_bias[0, eos] += torch.quantile(gap, eos_rate) + 0.05
    gen = dict(
        bad_words_ids=[[cfg["pad_token_id"]]],
        decoder_start_token_id=cfg["decoder_start_token_id"],
        eos_token_id=cfg["eos_token_id"],
        forced_eos_token_id=cfg["eos_token_id"],
        pad_token_id=cfg["pad_token_id"],
        max_length=64,
        num_beams=4,
    )
    gen.update(generation or {})
    model.generation_config = GenerationConfig(**gen)
    model.save_pretrained(path)
    return model
