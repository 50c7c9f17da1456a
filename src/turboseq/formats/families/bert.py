"""BERT (incl. MiniLM), RoBERTa and XLM-R encoder checkpoints -> ``EncoderSpec``.

Post-norm layers with biases and a layer norm on the embeddings; token embeddings plus the segment-0
embedding plus learned positions. RoBERTa/XLM-R number positions from ``pad_token_id + 1`` (the rows before
are never used for real tokens), so their table is stored from that offset. Pooling comes from a
sentence-transformers directory (``modules.json``, ``1_Pooling/config.json``, a Normalize module) when
present, else mean pooling; a ``*ForSequenceClassification`` head is mapped when its weights are there.
"""

from __future__ import annotations

import json
from pathlib import Path

from turboseq.errors import ModelLoadError
from turboseq.formats.families.common import Checkpoint
from turboseq.kinds import ModelKind
from turboseq.runtime.spec import (
    Classifier,
    Embeddings,
    EncoderLayer,
    EncoderSpec,
    FeedForward,
    LayerNorm,
    Pooling,
    SelfAttention,
    Stack,
)

MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
KIND = ModelKind.ENCODER


def _prefixed(ckpt: Checkpoint) -> str:
    """'' for a bare encoder checkpoint, else the prefix a task model stores the encoder under."""
    for prefix in ("", "bert.", "roberta.", "model."):
        if ckpt.optional(prefix + "embeddings.word_embeddings.weight") is not None:
            return prefix
    raise ModelLoadError(f"{ckpt.source}: missing weight embeddings.word_embeddings.weight")


def read_pooling(model_dir: Path) -> Pooling:
    """sentence-transformers' pooling mode and whether a Normalize module follows (mean, no normalize if the
    directory is a plain transformers model)."""
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return Pooling("mean", False)
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        pooling = Pooling("mean", any(m.get("type", "").endswith("Normalize") for m in modules))
        for module in modules:
            if module.get("type", "").endswith("Pooling"):
                cfg = json.loads((model_dir / module.get("path", "") / "config.json").read_text(encoding="utf-8"))
                keys = {
                    "pooling_mode_cls_token": "cls",
                    "pooling_mode_mean_tokens": "mean",
                    "pooling_mode_max_tokens": "max",
                }
                on = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
                modes = [keys[k] for k in on if k in keys]
                if len(on) != 1 or len(modes) != 1:
                    raise ModelLoadError(f"{model_dir}: unsupported pooling configuration {cfg} (one of cls/mean/max)")
                pooling.mode = modes[0]
    except (OSError, ValueError, AttributeError) as err:
        if isinstance(err, ModelLoadError):
            raise
        raise ModelLoadError(f"{modules_path}: unreadable sentence-transformers configuration ({err})") from None
    return pooling


def build(config: dict, ckpt: Checkpoint, model_dir: Path | None = None) -> EncoderSpec:
    model_type = config["model_type"]
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ModelLoadError(f"unsupported position_embedding_type {config['position_embedding_type']!r}")
    p = _prefixed(ckpt)
    heads = config["num_attention_heads"]
    eps = config.get("layer_norm_eps", 1e-12)
    act = config.get("hidden_act", "gelu")
    pad = config.get("pad_token_id", 0 if model_type == "bert" else 1)

    def norm(prefix: str) -> LayerNorm:
        return LayerNorm(ckpt.first(prefix + "weight"), ckpt.first(prefix + "bias"), eps)

    positions = ckpt.first(p + "embeddings.position_embeddings.weight")
    if model_type != "bert":
        positions = positions[pad + 1 :]  # RoBERTa numbers real positions from padding_idx + 1
    token_type = ckpt.optional(p + "embeddings.token_type_embeddings.weight")
    embed = Embeddings(
        ckpt.first(p + "embeddings.word_embeddings.weight"),
        positions=positions,
        norm=norm(p + "embeddings.LayerNorm."),
        token_type=token_type,
    )
    layers = []
    for i in range(config["num_hidden_layers"]):
        q = f"{p}encoder.layer.{i}."
        qkv = ckpt.fuse(*(ckpt.linear(f"{q}attention.self.{n}.") for n in ("query", "key", "value")))
        layers.append(
            EncoderLayer(
                self_attn=SelfAttention(qkv, ckpt.linear(q + "attention.output.dense."), heads),
                self_attn_norm=norm(q + "attention.output.LayerNorm."),
                ffn=FeedForward(ckpt.linear(q + "intermediate.dense."), ckpt.linear(q + "output.dense."), act),
                ffn_norm=norm(q + "output.LayerNorm."),
            )
        )
    classifier = None
    labels_map = config.get("id2label") or {}
    if ckpt.optional("classifier.out_proj.weight") is not None:  # RoBERTa / XLM-R head
        classifier = Classifier(ckpt.linear("classifier.dense."), ckpt.linear("classifier.out_proj."), [])
    elif ckpt.optional("classifier.weight") is not None:  # BERT: pooler + classifier
        classifier = Classifier(ckpt.linear(p + "pooler.dense."), ckpt.linear("classifier."), [])
    if classifier is not None:
        n = classifier.out.weight.shape[0]
        classifier.labels = [str(labels_map.get(str(i), labels_map.get(i, f"LABEL_{i}"))) for i in range(n)]
    return EncoderSpec(
        encoder=Stack(embed, layers, pre_norm=False),
        max_positions=positions.shape[0],
        pad_token_id=pad,
        pooling=read_pooling(model_dir) if model_dir is not None else Pooling(),
        classifier=classifier,
    )
