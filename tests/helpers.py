"""Builders for small random-init models saved as real Hugging Face directories."""

from __future__ import annotations

import json

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


# Shapes covering Marian's switches: activation, tied/untied head, shared/separate embeddings, head count,
# embedding scale. Weights are drawn large (make_marian) so that top-2 logits are far apart.
MARIAN_CONFIGS = {
    "swish-untied-4h": dict(seed=1, std=0.2, emb_std=0.2, tie_word_embeddings=False),
    "relu-separate-8h": dict(
        seed=2,
        std=0.3,
        emb_std=0.3,
        activation_function="relu",
        share_encoder_decoder_embeddings=False,
        decoder_vocab_size=128,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        scale_embedding=False,
    ),
    "gelu-tied-2h": dict(
        seed=3,
        std=0.3,
        emb_std=0.3,
        activation_function="gelu",
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        d_model=32,
        encoder_layers=3,
        decoder_layers=1,
    ),
}


def make_marian(
    path,
    seed: int = 0,
    std: float = 0.5,
    emb_std: float = 0.5,
    eos_rate: float = 0.08,
    generation: dict | None = None,
    **overrides,
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


def make_marian_with_tokenizer(path, config: str):
    """``MARIAN_CONFIGS[config]`` with a 1024-token vocabulary and a trained MarianTokenizer, saved at ``path``."""
    from turboseq.bench.models import build_marian_tokenizer

    cfg = dict(MARIAN_CONFIGS[config])
    cfg.update(vocab_size=1024, pad_token_id=1023, decoder_start_token_id=1023)
    make_marian(path, **cfg)
    build_marian_tokenizer(path, 1024, 1023, spm_pieces=600)


# Shrunk shapes of real checkpoints; every architectural switch of the original is kept.
FAMILY_CONFIGS = {
    # t5-small: ReLU FFN, tied head with the d_model**-0.5 rescale; here fewer buckets and a short
    # max_distance so that short test sequences reach the logarithmic buckets too
    "t5": dict(
        model_type="t5",
        vocab_size=128,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=24,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    ),
    # flan-t5-small: gated-GELU FFN, its own LM head, heads * d_kv != d_model
    "flan-t5": dict(
        model_type="t5",
        vocab_size=128,
        d_model=64,
        d_kv=16,
        d_ff=96,
        num_layers=2,
        num_heads=6,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=24,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    ),
    # bart-base: post-norm, learned positions (offset 2), layernorm_embedding, final_logits_bias
    "bart": dict(
        model_type="bart",
        vocab_size=128,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=64,
        activation_function="gelu",
        scale_embedding=False,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
    ),
    # mbart-large: pre-norm with final layer norms, scaled embeddings
    "mbart": dict(
        model_type="mbart",
        vocab_size=128,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=64,
        activation_function="gelu",
        scale_embedding=True,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
    ),
    # pegasus: pre-norm, sinusoidal positions, scaled embeddings, no embedding layer norm
    "pegasus": dict(
        model_type="pegasus",
        vocab_size=128,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=64,
        activation_function="relu",
        scale_embedding=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        forced_eos_token_id=1,
    ),
}

# generation_config.json of the real checkpoints (bart-base ships beam 4, no_repeat 3, forced BOS/EOS)
FAMILY_GENERATION = {
    "t5": dict(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0),
    "flan-t5": dict(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0),
    "bart": dict(
        bos_token_id=0,
        decoder_start_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        no_repeat_ngram_size=3,
        num_beams=4,
        early_stopping=True,
    ),
    # mBART-50 style: the target language code (id 3 here) is forced as the first generated token
    "mbart": dict(
        bos_token_id=0,
        decoder_start_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
        forced_bos_token_id=3,
        forced_eos_token_id=2,
    ),
    "pegasus": dict(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, forced_eos_token_id=1, num_beams=4),
}


def _model_class(model_type: str):
    import transformers

    config_cls, model_cls = {
        "t5": ("T5Config", "T5ForConditionalGeneration"),
        "bart": ("BartConfig", "BartForConditionalGeneration"),
        "mbart": ("MBartConfig", "MBartForConditionalGeneration"),
        "pegasus": ("PegasusConfig", "PegasusForConditionalGeneration"),
    }[model_type]
    return getattr(transformers, config_cls), getattr(transformers, model_cls)


def make_family_model(
    path, kind: str, seed: int = 0, std: float = 0.3, emb_std: float = 0.3, eos_rate: float = 0.08, **overrides
):
    """A random-init T5/BART/mBART/PEGASUS model saved as a Hugging Face directory, weights drawn large as in
    ``make_marian``. EOS is made to win about ``eos_rate`` of a probe's steps by adding a random direction to
    the EOS row of the LM head (T5 has no logits bias), so that lengths vary."""
    from safetensors.torch import load_file, save_file
    from transformers import GenerationConfig

    cfg = dict(FAMILY_CONFIGS[kind])
    cfg.update(overrides)
    model_type = cfg.pop("model_type")
    config_cls, model_cls = _model_class(model_type)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**cfg)).eval()
    untied = cfg.get("tie_word_embeddings", True) is False
    if untied and model.lm_head.weight is model.get_input_embeddings().weight:
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name and model_type == "pegasus":
                continue  # fixed sinusoidal table
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.normal_(0.0, 1.0)
            elif any(k in name for k in ("embed", "shared", "lm_head")):
                p.normal_(0.0, emb_std)
            else:
                p.normal_(0.0, std / (p.shape[-1] ** 0.5) * 4 if p.dim() == 2 else std * 0.2)
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.normal_(0.0, 0.5)
        if eos_rate:
            eos = cfg["eos_token_id"]
            g = torch.Generator().manual_seed(seed)
            probe = torch.randint(3, cfg["vocab_size"], (16, 12), generator=g)
            probe[:, -1] = eos
            # the decoder inputs greedy search itself would feed (EOS banned), teacher-forced below
            dec = model.generate(
                probe,
                max_length=20,
                min_length=20,
                num_beams=1,
                do_sample=False,
                no_repeat_ngram_size=0,
                forced_bos_token_id=None,
                forced_eos_token_id=None,
            )[:, :-1]
            captured = []
            hook = model.lm_head.register_forward_hook(lambda m, args, out: captured.append(args[0]))
            logits = model(input_ids=probe, decoder_input_ids=dec).logits
            hook.remove()
            first = captured[0][:, 0].mean(0)
            first /= first.norm()
            h = captured[0].reshape(-1, captured[0].shape[-1])
            others = logits.clone()
            others[..., eos] = -float("inf")
            need = (others.max(-1).values - logits[..., eos]).flatten()  # logit EOS must gain to win
            # a random direction orthogonal to the first step's (nearly row-independent) hidden state, or
            # EOS would win right after the start token for all rows or for none
            u = torch.randn(h.shape[1], generator=g)
            u -= (u @ first) * first
            u /= u.norm()
            proj = h @ u
            # the smallest step along u making EOS win at `eos_rate` of the probe steps
            lo, hi = 0.0, 1e4
            for _ in range(60):
                beta = (lo + hi) / 2
                if (beta * proj > need).float().mean() < eos_rate:
                    lo = beta
                else:
                    hi = beta
            model.lm_head.weight[eos] += hi * u
    gen = dict(FAMILY_GENERATION[kind], max_length=40)
    model.generation_config = GenerationConfig(**gen)
    model.save_pretrained(path)
    if untied:
        # transformers 5 saves T5 heads as tied; write the separate head like real v1.1 checkpoints have it
        weights = load_file(path / "model.safetensors")
        weights["lm_head.weight"] = model.lm_head.weight.detach().clone()
        save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((path / "config.json").read_text())
        config["tie_word_embeddings"] = False
        config.pop("scale_decoder_outputs", None)
        (path / "config.json").write_text(json.dumps(config, indent=2))
    return model_cls.from_pretrained(path).eval()


def source_batch(vocab: int, pad: int, seed: int = 0, lengths=(12, 3, 9, 1, 15, 6), eos: int = 0, low: int = 1):
    """A right-padded, length-mixed batch of source ids in [low, vocab - 1) ending in EOS."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths) + 1
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(low, vocab - 1, (n,), generator=g)
        ids[i, n] = eos
        mask[i, : n + 1] = 1
    return ids, mask


def make_encoder(path, kind: str, classes: int | None = None, seed: int = 0):
    """A random-init RoBERTa / XLM-R (or BERT with a classification head) saved as a HF directory."""
    import transformers

    torch.manual_seed(seed)
    common = dict(
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=66,
        hidden_act="gelu",
    )
    config_cls = {"roberta": "RobertaConfig", "xlm-roberta": "XLMRobertaConfig", "bert": "BertConfig"}[kind]
    config = getattr(transformers, config_cls)(**common, pad_token_id=1 if kind != "bert" else 0)
    if classes:
        config.num_labels = classes
        config.id2label = {i: f"class_{i}" for i in range(classes)}
        config.label2id = {v: k for k, v in config.id2label.items()}
        model_cls = {
            "roberta": "RobertaForSequenceClassification",
            "xlm-roberta": "XLMRobertaForSequenceClassification",
            "bert": "BertForSequenceClassification",
        }[kind]
    else:
        model_cls = {"roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel", "bert": "BertModel"}[kind]
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    model.save_pretrained(path)
    return model


def run_cli(*args, stdin: str | bytes = ""):
    """``turboseq ARGS`` in a child process; stdout and stderr decoded as text."""
    import subprocess
    import sys

    data = stdin if isinstance(stdin, bytes) else stdin.encode()
    res = subprocess.run(
        [sys.executable, "-m", "turboseq.cli", *map(str, args)], input=data, capture_output=True, timeout=300
    )
    return subprocess.CompletedProcess(
        res.args, res.returncode, res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace")
    )


# seeds picked so that sentences end at varied lengths (checked by generation/test_parity.test_lengths_vary)
FAMILY_SEEDS = {"t5": 3, "flan-t5": 1, "bart": 4, "mbart": 6, "pegasus": 5}


# Decoder-only shapes covering the families' switches: GPT-2 with and without per-layer attention scaling;
# Llama with grouped-query attention (fewer key/value heads), a non-default rope_theta, llama3 rope scaling,
# a tied head; Qwen2 with q/k/v biases and one key/value head. Weights are drawn large (as make_marian's) so
# that top-2 logits are far apart.
CAUSAL_CONFIGS = {
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=96, seed=11),
    "gpt2-scaled-2h": dict(
        model_type="gpt2", n_embd=48, n_layer=3, n_head=2, n_positions=80, scale_attn_by_inverse_layer_idx=True, seed=12
    ),
    "llama-gqa": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=96,
        rope_theta=5000.0,
        seed=13,
    ),
    "llama-tied-scaled": dict(
        model_type="llama",
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=6,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=32,
        ),
        seed=14,
    ),
    "qwen2": dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=96,
        rope_theta=20000.0,
        seed=15,
    ),
}


def make_causal(path, name: str, vocab_size: int = 300, tokenizer: bool = False, **overrides):
    """A random-init decoder-only model of ``CAUSAL_CONFIGS[name]`` (with ``overrides``) saved as a Hugging Face
    directory (with a GPT-2-style tokenizer of ``vocab_size`` if asked); returns the transformers reference loaded
    from it.

    The token id that greedy search picks first, after some steps, in most probe rows becomes EOS, so that
    rows finish at different steps."""
    import transformers

    cfg = dict(CAUSAL_CONFIGS[name], **overrides)
    model_type, seed = cfg.pop("model_type"), cfg.pop("seed")
    config_cls, model_cls = {
        "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    }[model_type]
    if tokenizer:
        from turboseq.bench.models import build_gpt2_tokenizer

        build_gpt2_tokenizer(path, vocab_size, bpe_size=min(400, vocab_size - 1))
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(
        vocab_size=vocab_size, bos_token_id=vocab_size - 1, eos_token_id=0, **cfg
    )
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or "ln_" in pname:
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if pname.endswith("weight") else 0.1 * torch.randn_like(p))
            elif any(k in pname for k in ("embed", "wte", "wpe", "lm_head")):
                p.normal_(0.0, 0.3)
            elif p.dim() == 2:
                fan_in = p.shape[0] if model_type == "gpt2" else p.shape[1]  # GPT-2's Conv1D is [in, out]
                p.normal_(0.0, 1.2 / fan_in**0.5)
            else:
                p.normal_(0.0, 0.05)
        g = torch.Generator().manual_seed(seed)
        probe = torch.randint(0, vocab_size - 1, (16, 6), generator=g)
        out = model.generate(probe, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)[:, 6:]
    counts: dict = {}
    for row in out.tolist():
        for t in dict.fromkeys(row[3:]):  # tokens of the row after its first steps, once each
            counts[t] = counts.get(t, 0) + 1
    eos = max(counts, key=lambda t: (counts[t] if counts[t] < 14 else 0, -t))
    model.config.eos_token_id = eos
    model.generation_config = transformers.GenerationConfig(bos_token_id=vocab_size - 1, eos_token_id=eos)
    model.save_pretrained(path)
    return getattr(transformers, model_cls).from_pretrained(path).eval()


def wav_bytes(samples, float32: bool = False) -> bytes:
    """A 16 kHz mono WAV file of ``samples``: 16-bit PCM (clipped to [-1, 1]), or 32-bit float (format 3), which
    can hold NaN and infinity."""
    import struct

    import numpy as np

    if float32:
        data, fmt = np.asarray(samples).astype("<f4").tobytes(), struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)
    else:
        data = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
        fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    head = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
    return head + b"data" + struct.pack("<I", len(data)) + data


def raw_http(port: int, data: bytes, wait_s: float = 5.0) -> bytes:
    """Send raw bytes to a loopback server, then read whatever it answers until it closes (or ``wait_s``)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        out = b""
        try:  # a server that answers before the whole request arrived may close while we still send
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def hostile_json(max_leaves: int):
    """hypothesis: any JSON value with hostile scalars (None, booleans, integers past 64 bits, NaN and infinities,
    text), nested in lists and objects."""
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=30)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=max_leaves,
    )


def compute_types(*names: str) -> list:
    """pytest parameters for these compute types, each skipped on a CPU that does not run it (bfloat16 needs
    AVX-512 or AMX: an AVX2-only CPU runs float32 and int8)."""
    import pytest

    return [pytest.param(n, marks=pytest.mark.skipif(not runs(n), reason=f"this CPU runs no {n}")) for n in names]


def runs(compute_type: str) -> bool:
    """Whether this CPU runs ``compute_type``."""
    from turboseq.runtime.compute import supported_compute_types

    return compute_type in supported_compute_types()
