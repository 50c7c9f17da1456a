"""Small Hugging Face models trained here on a synthetic transduction task, for measuring output quality.

The bench models (``bench.models``, ``bench.causal``) have random weights: their top-1 logits are near ties,
so a low-precision compute mode flips tokens there for no reason that matters, and "how often does bfloat16
change the output" says nothing. The models built here are trained until their greedy outputs are right, so
their predictions are decisive the way a real checkpoint's are, and a changed token is a real quality loss.

The task: a sentence of 4-16 words from a made-up vocabulary is mapped word by word through a fixed random
bijection of the vocabulary, and the order is reversed. Each output word needs attention to one input
position, the lookups need the embeddings and FFNs. Encoder-decoders (Marian, T5, BART) read the source and
write the target; decoder-only models (GPT-2, Llama) continue the prompt "source words =" with the target.

Everything is rebuilt from fixed seeds (nothing is downloaded): the vocabulary, a word-level tokenizer in
each family's special-token layout, the real transformers model classes at small sizes, and a fixed number
of optimizer steps (about ``seconds`` of training on a 2-core CPU). Models are cached under
``cache_root()`` like the other bench models.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path

from turboseq.bench.models import cache_root

TRAINED_ARCHS = ("marian", "t5", "bart", "gpt2", "llama")
VERSION = "v1"
MARKER = "trained.json"  # written last: a directory without it is incomplete
DEFAULT_SECONDS = 90.0
MIN_WORDS, MAX_WORDS = 4, 16
N_WORDS = 160
TRAIN_SEED = 1 << 30  # training batches use seeds from here on; held-out sets use small seeds
BATCH = 64
# share of the steps over which sentence lengths grow to the full range (``_max_words``); GPT-2 sees full
# lengths from the start, or its learned positions past the short sentences stay untrained and the loss
# jumps back up as the sentences grow
CURRICULUM = {"marian": 0.3, "t5": 0.3, "bart": 0.3, "gpt2": 0.0, "llama": 0.3}
MIN_EXACT_MATCH = 0.9  # a model that learned the task less well than this is not cached

LEARNING_RATE = 1e-3
# optimizer steps for the default ``seconds``, each with a margin over ``MIN_EXACT_MATCH``. On the 2-core
# development machine (2 torch threads) they took: Marian 78 s, Llama 84 s, T5 116 s and BART 125 s (both find
# the reversal later, T5 without absolute positions), GPT-2 133 s (full-length batches from the start). Where
# the plateau before the reversal is found ends moves with floating-point details (thread count, BLAS), hence
# the margin. The count is fixed, never read off the clock, so a build is reproducible on one machine; other
# ``seconds`` scale it.
STEPS = {"marian": 1400, "t5": 2000, "bart": 2000, "gpt2": 1600, "llama": 1200}

# arch -> (model class, config class, config); vocab_size and special ids are filled in from the tokenizer
CONFIGS = {
    "marian": (
        "MarianMTModel",
        "MarianConfig",
        dict(
            d_model=128,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=512,
            decoder_ffn_dim=512,
            max_position_embeddings=64,
            activation_function="swish",
            scale_embedding=True,
            share_encoder_decoder_embeddings=True,
            tie_word_embeddings=False,  # tied, the tiny model sits on a plateau for most of its training
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
        ),
    ),
    "t5": (
        "T5ForConditionalGeneration",
        "T5Config",
        dict(
            d_model=128,
            d_kv=32,
            d_ff=512,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="relu",
            # transformers 5 keeps the head tied and stores this as scale_decoder_outputs=False: without v1.0's
            # d_model**-0.5 rescale of the head's input, which left the logits soft (near ties again)
            tie_word_embeddings=False,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            dropout_rate=0.0,
        ),
    ),
    "bart": (
        "BartForConditionalGeneration",
        "BartConfig",
        dict(
            d_model=128,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=512,
            decoder_ffn_dim=512,
            max_position_embeddings=64,
            activation_function="gelu",
            tie_word_embeddings=False,  # as Marian's
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
        ),
    ),
    "gpt2": (
        "GPT2LMHeadModel",
        "GPT2Config",
        dict(n_embd=128, n_layer=3, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    ),
    "llama": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(
            hidden_size=128,
            intermediate_size=352,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
    ),
}

# the special tokens of each family, in id order, and the roles they play
SPECIALS = {
    "marian": (["</s>", "<unk>"], dict(eos="</s>", unk="<unk>", pad="<pad>")),  # <pad> is the last id
    "t5": (["<pad>", "</s>", "<unk>"], dict(pad="<pad>", eos="</s>", unk="<unk>")),
    "bart": (["<s>", "<pad>", "</s>", "<unk>"], dict(bos="<s>", pad="<pad>", eos="</s>", unk="<unk>")),
    "gpt2": ([], dict(bos="<|endoftext|>", eos="<|endoftext|>", unk="<|endoftext|>")),  # the last id
    "llama": (["<unk>", "<s>", "</s>"], dict(unk="<unk>", bos="<s>", eos="</s>")),
}
ENCODER_DECODER = ("marian", "t5", "bart")


def _words() -> list[str]:
    """The task's vocabulary: ``N_WORDS`` two-syllable made-up words, fixed."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    return random.Random(0).sample([a + b for a in syllables for b in syllables], N_WORDS)


def _bijection() -> dict[str, str]:
    words = _words()
    images = list(words)
    random.Random(1).shuffle(images)
    return dict(zip(words, images))


def task_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (source, target) pairs: 4-16 distinct random words, and the same words mapped through the task's
    fixed bijection in reverse order. Training draws from seeds >= 2**30; use small seeds for held-out sets."""
    return _pairs(n, seed, MAX_WORDS)


def _pairs(n: int, seed: int, max_words: int) -> list[tuple[str, str]]:
    words, mapping, rng = _words(), _bijection(), random.Random(seed)
    pairs = []
    for _ in range(n):
        source = rng.sample(words, rng.randint(MIN_WORDS, max_words))
        pairs.append((" ".join(source), " ".join(mapping[w] for w in reversed(source))))
    return pairs


def _max_words(arch: str, step: int, steps: int) -> int:
    """The training curriculum: sentences grow from ``MIN_WORDS`` to ``MAX_WORDS`` words over the first
    ``CURRICULUM`` of the steps: the attention pattern is found sooner on short ones, and the plateau before
    it is found is the part of training whose length is least predictable."""
    ramp = round(steps * CURRICULUM[arch])
    if ramp == 0:
        return MAX_WORDS
    return MIN_WORDS + (MAX_WORDS - MIN_WORDS) * min(step, ramp) // ramp


def prompt_text(source: str) -> str:
    """The decoder-only models' prompt for ``source``: its words then "=" (Llama's tokenizer adds BOS)."""
    return f"{source} ="


def _tokenizer(arch: str):
    """A WordLevel tokenizer with ``arch``'s special tokens, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    first, roles = SPECIALS[arch]
    tokens = first + _words() + ["="]
    tokens += [t for t in dict.fromkeys(roles.values()) if t not in tokens]  # Marian's <pad>, GPT-2's EOT
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=roles["unk"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    eos, bos = roles["eos"], roles.get("bos")
    if arch == "bart":
        template = f"{bos} $A {eos}"
    elif arch in ENCODER_DECODER:
        template = f"$A {eos}"
    elif arch == "llama":
        template = f"{bos} $A"
    else:
        template = "$A"
    used = [t for t in (bos, eos) if t is not None and t in template.split()]
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(t, vocab[t]) for t in used])
    kwargs = {f"{role}_token": token for role, token in roles.items()}
    if arch not in ENCODER_DECODER:
        kwargs.setdefault("pad_token", eos)  # decoder-only families have none; batches pad with EOS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=64,
        padding_side="right" if arch in ENCODER_DECODER else "left",
        **kwargs,
    )


def _build(arch: str, tokenizer):
    """The untrained model and its generation config (greedy, no forced tokens)."""
    import transformers
    from transformers import GenerationConfig

    model_cls, config_cls, config = CONFIGS[arch]
    ids = dict(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if arch in ENCODER_DECODER:
        # Marian and T5 start the decoder with the pad token, BART with EOS
        ids["decoder_start_token_id"] = tokenizer.eos_token_id if arch == "bart" else tokenizer.pad_token_id
    if arch in ("marian", "bart"):  # their configs force EOS (and BART's BOS) by default: nothing forced here
        ids.update(forced_bos_token_id=None, forced_eos_token_id=None)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config, **ids))
    if arch == "t5":
        import torch

        with torch.no_grad():  # T5's N(0, 1) embedding init makes this small model learn several times slower
            model.get_input_embeddings().weight.normal_(0.0, 0.02)
    generation = {k: v for k, v in ids.items() if k != "vocab_size" and not k.startswith("forced") and v is not None}
    model.generation_config = GenerationConfig(**generation, max_length=64, num_beams=1, do_sample=False)
    return model


def _batch(arch: str, tokenizer, pairs: list[tuple[str, str]]) -> dict:
    """Model inputs with labels for ``pairs``; decoder-only models get loss on the target (and EOS) only."""
    import torch

    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    if arch in ENCODER_DECODER:
        batch = tokenizer(sources, text_target=targets, padding=True, return_tensors="pt")
        batch["labels"] = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
        return dict(batch)
    prompts = tokenizer([prompt_text(s) for s in sources])["input_ids"]
    answers = tokenizer(targets, add_special_tokens=False)["input_ids"]
    rows = [p + a + [tokenizer.eos_token_id] for p, a in zip(prompts, answers)]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.eos_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, rows)):
        input_ids[i, : len(r)] = torch.tensor(r)
        labels[i, len(p) : len(r)] = torch.tensor(r[len(p) :])
        mask[i, : len(r)] = 1
    return dict(input_ids=input_ids, attention_mask=mask, labels=labels)


def _steps(arch: str, seconds: float) -> int:
    return max(1, round(STEPS[arch] * seconds / DEFAULT_SECONDS))


def _train(arch: str, model, tokenizer, steps: int, progress: bool) -> float:
    """AdamW with warmup and cosine decay for ``steps`` steps of ``BATCH`` fresh pairs; returns the seconds."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    warmup = max(1, steps // 20)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    model.train()
    start = time.perf_counter()
    with tqdm(total=steps, desc=f"train {arch}", disable=not progress, unit="step") as bar:
        for step in range(steps):
            loss = model(
                **_batch(arch, tokenizer, _pairs(BATCH, TRAIN_SEED + step, _max_words(arch, step, steps)))
            ).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            if step % 20 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            bar.update(1)
    model.eval()
    return time.perf_counter() - start


def _greedy(arch: str, model, tokenizer, sources: list[str], batch_size: int = 50) -> list[str]:
    """transformers' greedy outputs for ``sources`` (decoder-only: the continuation of the prompt)."""
    import torch

    outputs = []
    for i in range(0, len(sources), batch_size):
        chunk = sources[i : i + batch_size]
        texts = chunk if arch in ENCODER_DECODER else [prompt_text(s) for s in chunk]
        inputs = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=False, num_beams=1)
        if arch not in ENCODER_DECODER:
            out = out[:, inputs["input_ids"].shape[1] :]
        outputs += tokenizer.batch_decode(out, skip_special_tokens=True)
    return outputs


def _exact_match(arch: str, model, tokenizer, n: int = 200, seed: int = 0) -> float:
    pairs = task_pairs(n, seed)
    outputs = _greedy(arch, model, tokenizer, [s for s, _ in pairs])
    return sum(o.strip() == t for o, (_, t) in zip(outputs, pairs)) / n


def trained_model(arch: str, seconds: float = DEFAULT_SECONDS, progress: bool = True) -> Path:
    """The directory of ``arch``'s trained model (weights, generation config, tokenizer), built on first use.

    Training runs a fixed number of steps (``STEPS``, scaled by ``seconds`` / 90: 80-135 s on a 2-core CPU for
    the default); the result depends only on ``arch`` and that step count. The default is cached as
    ``trained-{arch}-v1``, another length gets the step count in its name. The greedy exact match on 200 held-out pairs is printed
    (``progress``) and kept in the directory's ``trained.json``; under 90% raises ``RuntimeError`` and nothing
    is cached."""
    if arch not in TRAINED_ARCHS:
        raise ValueError(f"unknown trained arch {arch!r}; available: {', '.join(TRAINED_ARCHS)}")
    steps = _steps(arch, seconds)
    name = f"trained-{arch}-{VERSION}"
    if steps != _steps(arch, DEFAULT_SECONDS):
        name += f"-{steps}steps"
    path = cache_root() / name
    if (path / MARKER).is_file():
        return path

    import torch

    with torch.random.fork_rng():  # the caller's random stream is left as it was
        torch.manual_seed(0)
        tokenizer = _tokenizer(arch)
        model = _build(arch, tokenizer)
        took = _train(arch, model, tokenizer, steps, progress)
    accuracy = _exact_match(arch, model, tokenizer)
    if progress:
        print(f"trained {arch}: {steps} steps in {took:.0f} s, held-out exact match {accuracy:.1%}")
    if accuracy < MIN_EXACT_MATCH:
        raise RuntimeError(
            f"{arch} reached only {accuracy:.1%} held-out exact match after {steps} steps "
            f"(needs {MIN_EXACT_MATCH:.0%}); train longer (a larger `seconds`)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # one per process: concurrent builds do not mix
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # safetensors
    tokenizer.save_pretrained(tmp)
    info = dict(arch=arch, steps=steps, batch=BATCH, train_seconds=round(took, 1), exact_match=accuracy)
    (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if (path / MARKER).is_file():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        return path
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)  # only a complete directory ever appears under the final name
    return path
