"""Whisper checkpoints (Hugging Face or CTranslate2) -> ``Seq2SeqSpec``.

Encoder: two GELU convolutions over log-mel frames (the second with stride 2), fixed sinusoidal positions,
pre-norm layers and a final norm. Decoder: learned positions, pre-norm layers (BART's weight names), a final
norm, and the token embedding as the output projection.

A CTranslate2 Whisper directory (``model.bin``, ``config.json`` without ``model_type``, ``tokenizer.json``)
is read by renaming its variables to Hugging Face's names (``ct2_to_hf``): fused self-attention QKV and
cross-attention KV are split back. Its config.json only holds the token lists (suppress_ids, lang_ids, ...);
the sizes come from the weight shapes and the special token ids from tokenizer.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from turboseq.errors import ModelLoadError
from turboseq.formats.families.common import Checkpoint, bart_style_layers, dedup, layer_norm
from turboseq.kinds import ModelKind
from turboseq.runtime.spec import AudioFrontEnd, Conv1d, Embeddings, Linear, Seq2SeqSpec, Stack

MODEL_TYPES = ("whisper",)
KIND = ModelKind.SPEECH


def build(config: dict, ckpt: Checkpoint) -> Seq2SeqSpec:
    front_end = AudioFrontEnd(
        convs=[
            Conv1d(ckpt.first("model.encoder.conv1.weight"), ckpt.optional("model.encoder.conv1.bias"), 1, 1),
            Conv1d(ckpt.first("model.encoder.conv2.weight"), ckpt.optional("model.encoder.conv2.bias"), 2, 1),
        ],
        positions=ckpt.first("model.encoder.embed_positions.weight"),
    )
    tokens = ckpt.first("model.decoder.embed_tokens.weight")
    stored_head = ckpt.optional("proj_out.weight")
    head = tokens if stored_head is None else dedup(tokens, stored_head)
    decoder_embed = Embeddings(tokens, 1.0, ckpt.first("model.decoder.embed_positions.weight"))
    encoder_layers, decoder_layers = bart_style_layers(ckpt, config)
    eos = config.get("eos_token_id", 50256)
    return Seq2SeqSpec(
        encoder=Stack(front_end, encoder_layers, True, layer_norm(ckpt, "model.encoder.layer_norm.")),
        decoder=Stack(decoder_embed, decoder_layers, True, layer_norm(ckpt, "model.decoder.layer_norm.")),
        lm_head=Linear(head),
        max_positions=config.get("max_target_positions", decoder_embed.positions.shape[0]),
        vocab_size=head.shape[0],
        pad_token_id=config.get("pad_token_id", eos),
        eos_token_id=eos,
        decoder_start_token_id=config.get("decoder_start_token_id", 50257),
    )


# --- CTranslate2 directories ----------------------------------------------------------------------------------


def _split_rows(t: Tensor, parts: int) -> list[Tensor]:
    return list(t.chunk(parts, dim=0))


def ct2_to_hf(variables: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a CTranslate2 WhisperSpec's variables to Hugging Face's WhisperForConditionalGeneration names."""
    out: dict[str, Tensor] = {}

    def linear(src: str, dst: str, bias: bool = True):
        out[dst + ".weight"] = variables[src + "/weight"]
        if bias and src + "/bias" in variables:
            out[dst + ".bias"] = variables[src + "/bias"]

    def norm(src: str, dst: str):
        out[dst + ".weight"] = variables[src + "/gamma"]
        out[dst + ".bias"] = variables[src + "/beta"]

    def fused(src: str, dst: str, names: tuple[str, ...]):
        weights = _split_rows(variables[src + "/weight"], len(names))
        biases = _split_rows(variables[src + "/bias"], len(names)) if src + "/bias" in variables else None
        for i, name in enumerate(names):
            out[f"{dst}.{name}.weight"] = weights[i]
            if biases is not None and name != "k_proj":  # Whisper's key projections have no bias (CT2 stores 0)
                out[f"{dst}.{name}.bias"] = biases[i]

    for side in ("encoder", "decoder"):
        i = 0
        while f"{side}/layer_{i}/ffn/linear_0/weight" in variables:
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fused(f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj"))
            linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if side == "decoder":
                linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                fused(f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k_proj", "v_proj"))
                linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
                norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
            linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
            norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
            i += 1
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    out["model.encoder.embed_positions.weight"] = variables["encoder/position_encodings/encodings"]
    out["model.decoder.embed_positions.weight"] = variables["decoder/position_encodings/encodings"]
    out["model.decoder.embed_tokens.weight"] = variables["decoder/embeddings/weight"]
    return out


def _special_ids(tokenizer_file: Path) -> dict[str, int]:
    try:
        data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{tokenizer_file}: cannot read the tokenizer ({err})") from None
    return {t["content"]: t["id"] for t in data.get("added_tokens", [])}


def ct2_configs(model_dir: Path, variables: dict[str, Tensor], ct2_config: dict) -> tuple[dict, dict]:
    """Hugging Face-style (config, generation_config) for a CTranslate2 Whisper directory."""
    tokens = _special_ids(model_dir / "tokenizer.json")

    def token(name: str) -> int:
        if name not in tokens:
            raise ModelLoadError(f"{model_dir / 'tokenizer.json'}: special token {name} not found")
        return tokens[name]

    def heads(side: str) -> int:
        key = f"{side}/num_heads"
        if key not in variables:
            raise ModelLoadError(f"{model_dir / 'model.bin'}: missing variable {key!r}")
        return int(variables[key].item())

    def count_layers(side: str) -> int:
        return sum(1 for k in variables if k.startswith(f"{side}/layer_") and k.endswith("/ffn/linear_0/weight"))

    vocab, d_model = variables["decoder/embeddings/weight"].shape
    lang_ids = ct2_config.get("lang_ids") or []
    multilingual = vocab >= 51865  # the English-only models have 51864 tokens
    id_to_token = {v: k for k, v in tokens.items()}
    config = {
        "model_type": "whisper",
        "architectures": ["WhisperForConditionalGeneration"],
        "vocab_size": vocab,
        "num_mel_bins": variables["encoder/conv1/weight"].shape[1],
        "d_model": d_model,
        "encoder_layers": count_layers("encoder"),
        "decoder_layers": count_layers("decoder"),
        "encoder_attention_heads": heads("encoder"),
        "decoder_attention_heads": heads("decoder"),
        "encoder_ffn_dim": variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "max_source_positions": variables["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": variables["decoder/position_encodings/encodings"].shape[0],
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "pad_token_id": token("<|endoftext|>"),
        "bos_token_id": token("<|endoftext|>"),
        "eos_token_id": token("<|endoftext|>"),
        "decoder_start_token_id": token("<|startoftranscript|>"),
    }
    generation_config = {
        "decoder_start_token_id": config["decoder_start_token_id"],
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
        "max_length": config["max_target_positions"],
        "suppress_tokens": list(ct2_config.get("suppress_ids") or []),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin") or []),
        "no_timestamps_token_id": token("<|notimestamps|>"),
        "prev_sot_token_id": token("<|startofprev|>"),
        "max_initial_timestamp_index": 50,
        "return_timestamps": False,
        "is_multilingual": multilingual,
    }
    if multilingual:
        generation_config["lang_to_id"] = {id_to_token[i]: i for i in lang_ids if i in id_to_token}
        generation_config["task_to_id"] = {"transcribe": token("<|transcribe|>"), "translate": token("<|translate|>")}
    if ct2_config.get("alignment_heads"):
        generation_config["alignment_heads"] = ct2_config["alignment_heads"]
    return config, generation_config


# generation_config.json keys the Whisper prompt and rules read (besides the generic generation settings)
WHISPER_KEYS = (
    "suppress_tokens",
    "begin_suppress_tokens",
    "no_timestamps_token_id",
    "prev_sot_token_id",
    "max_initial_timestamp_index",
    "return_timestamps",
    "is_multilingual",
    "lang_to_id",
    "task_to_id",
    "alignment_heads",  # [layer, head] pairs of the cross-attention heads that follow the words (word timestamps)
)


def generation_extras(model_dir: Path, config: dict, generation_config: dict | None) -> dict:
    """The Whisper-specific generation keys: config.json's, overridden by generation_config.json's; special
    token ids missing from both are looked up in tokenizer.json."""
    out = {k: config[k] for k in WHISPER_KEYS if config.get(k) is not None}
    out.update({k: v for k, v in (generation_config or {}).items() if k in WHISPER_KEYS and v is not None})
    tokenizer_file = Path(model_dir) / "tokenizer.json"
    if tokenizer_file.is_file():
        tokens = _special_ids(tokenizer_file)
        for key, name in (("no_timestamps_token_id", "<|notimestamps|>"), ("prev_sot_token_id", "<|startofprev|>")):
            if key not in out and name in tokens:
                out[key] = tokens[name]
    out.setdefault("is_multilingual", config.get("vocab_size", 0) >= 51865)
    return out
