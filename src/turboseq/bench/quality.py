"""What each compute type costs in quality, against float32 of the same weights (``turboseq bench --quality``).

Random weights have near-tied logits and say nothing here, so the text families are measured on small models
trained on a synthetic task (``bench.trained``), Whisper on the real tiny.en and espeak-ng speech, and the
encoder on the real all-MiniLM-L6-v2. CTranslate2 int8 runs in the same harness on the same weights.

- identical: share of greedy outputs token for token equal to float32's;
- agreement: teacher-forced top-1, i.e. along float32's greedy output, the share of positions where the compute
  type's most likely next token is float32's;
- WER (Whisper): word error rate of the transcripts against the sentences spoken;
- cosine (encoder): cosine of sentence embeddings to float32's.
"""

from __future__ import annotations

import re

import torch

from turboseq.bench.models import cache_root, ct2_converted
from turboseq.bench.trained import TRAINED_ARCHS, prompt_text, task_pairs, trained_model

SEQ2SEQ = ("marian", "t5", "bart")
HELD_OUT_SEED = 777


def _rows_until_eos(seq: torch.Tensor, eos: set[int], start: int) -> list[int]:
    """Tokens of ``seq`` from ``start`` up to and including the first EOS."""
    out = []
    for t in seq[start:].tolist():
        out.append(t)
        if t in eos:
            break
    return out


def _seq2seq_quality(model_dir, compute_types: list[str], n: int, log) -> list[dict]:
    from turboseq.load import load

    sources = [s for s, _ in task_pairs(n, HELD_OUT_SEED)]
    exact = load(model_dir)
    tok = exact.tokenizer
    enc = tok(sources, return_tensors="pt", padding=True)
    eos = set(exact.settings().eos_token_ids)
    out = exact.generate(enc["input_ids"], enc["attention_mask"], num_beams=1, max_new_tokens=48)
    reference = [_rows_until_eos(row, eos, 1) for row in out]
    width = max(len(r) for r in reference)
    labels = torch.full((n, width), -1)
    for i, r in enumerate(reference):
        labels[i, : len(r)] = torch.tensor(r)
    forced = out[:, :width]  # decoder inputs: the start token and float32's tokens
    rows = []
    for name in compute_types:
        model = exact if name == "float32" else load(model_dir, compute_type=name)
        got = model.generate(enc["input_ids"], enc["attention_mask"], num_beams=1, max_new_tokens=48)
        identical = sum(_rows_until_eos(g, eos, 1) == r for g, r in zip(got, reference)) / n
        top1 = model.forward_logits(enc["input_ids"], enc["attention_mask"], forced).argmax(-1)
        valid = labels >= 0
        agreement = (top1[valid] == labels[valid]).float().mean().item()
        rows.append(dict(engine=f"turboseq {name}", identical=identical, agreement=agreement))
    rows.append(_ct2_seq2seq(model_dir, tok, enc, reference, eos, n, log))
    return rows


def _ct2_dir(model_dir, log):
    """The model converted for CTranslate2, or None (logged: not installed, or its converter cannot read this
    transformers version's config) so the other rows are still measured."""
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        log("ctranslate2 is not installed: its row is left empty")
        return None
    try:
        return str(ct2_converted(model_dir))
    except Exception as err:  # the converter's own error, from inside CTranslate2
        log(f"CTranslate2 could not convert {model_dir.name}: {type(err).__name__}: {err}; its row is left empty")
        return None


def _ct2_seq2seq(model_dir, tok, enc, reference, eos, n, log) -> dict:
    path = _ct2_dir(model_dir, log)
    if path is None:
        return dict(engine="ctranslate2 int8", identical=None, agreement=None)
    import ctranslate2

    translator = ctranslate2.Translator(path, device="cpu", compute_type="int8")
    sources = [
        tok.convert_ids_to_tokens(ids[m.bool()].tolist()) for ids, m in zip(enc["input_ids"], enc["attention_mask"])
    ]
    hyps = translator.translate_batch(sources, beam_size=1, max_decoding_length=48)
    eos_id = min(eos)
    got = [tok.convert_tokens_to_ids(h.hypotheses[0]) + [eos_id] for h in hyps]
    identical = sum(g == r for g, r in zip(got, reference)) / n
    # teacher forcing: float32's first t tokens as the target prefix, CTranslate2's next token after them
    entries, expected = [], []
    for i, r in enumerate(reference):
        for t in range(len(r)):
            entries.append((sources[i], tok.convert_ids_to_tokens(r[:t])))
            expected.append(r[t])
    results = translator.translate_batch(
        [s for s, _ in entries],
        target_prefix=[p for _, p in entries],
        beam_size=1,
        max_decoding_length=len(max(reference, key=len)) + 1,
    )
    hits = 0
    for (_, prefix), res, want in zip(entries, results, expected):
        hyp = tok.convert_tokens_to_ids(res.hypotheses[0])
        hits += (hyp[len(prefix)] if len(hyp) > len(prefix) else eos_id) == want
    return dict(engine="ctranslate2 int8", identical=identical, agreement=hits / len(expected))


def _causal_quality(model_dir, compute_types: list[str], n: int, log) -> list[dict]:
    from turboseq.load import load

    exact = load(model_dir)
    tok = exact.tokenizer
    prompts = [tok(prompt_text(s))["input_ids"] for s, _ in task_pairs(n, HELD_OUT_SEED)]
    eos = set(exact.settings().eos_token_ids)
    # as many new tokens as the longest prompt leaves room for in the model's positions (at most 48)
    new = min(48, exact.spec.max_positions - max(len(p) for p in prompts))
    outs = exact.generate_rows(prompts, num_beams=1, max_new_tokens=new)
    reference = [_rows_until_eos(o[0], eos, len(p)) for o, p in zip(outs, prompts)]
    # teacher forcing: prompt + float32's tokens, left-padded
    full = [p + r[:-1] for p, r in zip(prompts, reference)]
    width = max(len(f) for f in full)
    ids = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, f in enumerate(full):
        ids[i, width - len(f) :] = torch.tensor(f)
        mask[i, width - len(f) :] = 1
    rows = []
    for name in compute_types:
        model = exact if name == "float32" else load(model_dir, compute_type=name)
        got = model.generate_rows(prompts, num_beams=1, max_new_tokens=new)
        identical = sum(_rows_until_eos(g[0], eos, len(p)) == r for g, p, r in zip(got, prompts, reference)) / n
        top1 = model.forward_logits(ids, mask).argmax(-1)
        hits = total = 0
        for i, (p, r) in enumerate(zip(prompts, reference)):
            start = width - len(full[i]) + len(p) - 1  # the position that predicts the first new token
            pred = top1[i, start : start + len(r)].tolist()
            hits += sum(a == b for a, b in zip(pred, r))
            total += len(r)
        rows.append(dict(engine=f"turboseq {name}", identical=identical, agreement=hits / total))
    rows.append(_ct2_causal(model_dir, tok, prompts, reference, eos, n, log, new))
    return rows


def _ct2_causal(model_dir, tok, prompts, reference, eos, n, log, new_tokens: int) -> dict:
    path = _ct2_dir(model_dir, log)
    if path is None:
        return dict(engine="ctranslate2 int8", identical=None, agreement=None)
    import ctranslate2

    generator = ctranslate2.Generator(path, device="cpu", compute_type="int8")
    starts = [tok.convert_ids_to_tokens(p) for p in prompts]
    res = generator.generate_batch(starts, max_length=new_tokens, beam_size=1, include_prompt_in_result=False)
    eos_id = min(eos)
    got = [list(r.sequences_ids[0]) + [eos_id] for r in res]
    identical = sum(g[: len(r)] == r for g, r in zip(got, reference)) / n
    entries, expected = [], []
    for p, r in zip(prompts, reference):
        for t in range(len(r)):
            entries.append(tok.convert_ids_to_tokens(p + r[:t]))
            expected.append(r[t])
    res = generator.generate_batch(entries, max_length=1, beam_size=1, include_prompt_in_result=False)
    hits = sum((list(x.sequences_ids[0]) or [eos_id])[0] == want for x, want in zip(res, expected))
    return dict(engine="ctranslate2 int8", identical=identical, agreement=hits / len(expected))


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Word-level edit distance over all clips / words spoken (punctuation and case ignored)."""
    errors = words = 0
    for ref, hyp in zip(references, hypotheses):
        r, h = _words(ref), _words(hyp)
        prev = list(range(len(h) + 1))
        for i, rw in enumerate(r, 1):
            cur = [i] + [0] * len(h)
            for j, hw in enumerate(h, 1):
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw))
            prev = cur
        errors += prev[-1]
        words += len(r)
    return errors / max(words, 1)


def whisper_quality(compute_types: list[str], clips: int = 30, log=print) -> list[dict]:
    """On ``clips`` espeak-ng clips of held-out sentences (``data/sentences_en.txt``, which no test tunes on)."""
    from turboseq.bench.speech import held_out_sentences, synthesize, whisper_ct2_dir
    from turboseq.formats.audio import load_audio
    from turboseq.load import load

    ct2_dir = whisper_ct2_dir()
    spoken = held_out_sentences(clips)
    files = synthesize(spoken, cache_root() / "speech-quality")
    exact = load(ct2_dir)
    waves = [load_audio(f) for f in files]
    feats = torch.cat([exact.features(w) for w in waves])
    out = exact.generate(feats, num_beams=1)  # as transformers: without the decoder prompt
    eos = set(exact.settings().eos_token_ids)
    start = torch.tensor(exact.settings().decoder_prompt).expand(out.shape[0], -1)
    prompt = start.shape[1]
    reference = [_rows_until_eos(row, eos, 0) for row in out]
    forced = torch.cat((start, out), dim=1)[:, : prompt + max(len(r) for r in reference) - 1]
    rows = []
    greedy = dict(beam_size=1, temperature=0.0, condition_on_previous_text=False)  # both engines' transcripts
    for name in compute_types:
        model = exact if name == "float32" else load(ct2_dir, compute_type=name)
        texts = [model.transcribe(f, **greedy).text for f in files]
        top1 = model.forward_logits(feats, None, forced).argmax(-1)
        hits = sum(
            sum(a == b for a, b in zip(top1[i, prompt - 1 : prompt - 1 + len(r)].tolist(), r))
            for i, r in enumerate(reference)
        )
        total = sum(len(r) for r in reference)
        rows.append(dict(engine=f"turboseq {name}", wer=word_error_rate(spoken, texts), agreement=hits / total))
    try:
        from faster_whisper import WhisperModel

        fw = WhisperModel(str(ct2_dir), device="cpu", compute_type="int8", cpu_threads=torch.get_num_threads())
        texts = []
        for f in files:
            segments, _ = fw.transcribe(str(f), **greedy)
            texts.append(" ".join(s.text.strip() for s in segments))
        agreement = _ct2_whisper_agreement(fw.model, feats, exact.settings().decoder_prompt, reference, min(eos))
        rows.append(dict(engine="faster-whisper int8", wer=word_error_rate(spoken, texts), agreement=agreement))
    except ImportError:
        pass
    return rows


def _ct2_whisper_agreement(model, feats: torch.Tensor, start: list[int], reference: list[list[int]], eos: int) -> float:
    """CTranslate2's teacher-forced top-1 along float32's tokens: each prefix forced in a short greedy search
    with no token suppressed, whose first new token is its raw most likely next one (the clip's encoder output
    computed once). Its results hold the forced tokens and drop an ending EOS."""
    import ctranslate2
    import numpy as np

    hits = total = 0
    for clip, ref in zip(feats.numpy(), reference):
        encoded = np.array(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(clip[None]))))
        encoded_view = ctranslate2.StorageView.from_array(encoded)
        for j, want in enumerate(ref):
            prompt = start + ref[:j]
            # max_length is not a count of new tokens here: this leaves room for the prefix and at least one more
            result = model.generate(encoded_view, [prompt], beam_size=1,
                                    max_length=len(prompt) + j + 2, suppress_blank=False, suppress_tokens=[])  # fmt: skip
            seq = result[0].sequences_ids[0]
            hits += (seq[j] if len(seq) > j else eos) == want
        total += len(ref)
    return hits / total


def encoder_quality(compute_types: list[str], log=print) -> list[dict]:
    from turboseq.bench.encoder import minilm_dir
    from turboseq.bench.models import bench_sentences
    from turboseq.load import load

    texts = bench_sentences()[:200]
    exact = load(minilm_dir()).embed(texts)
    rows = []
    for name in compute_types:
        vectors = load(minilm_dir(), compute_type=name).embed(texts)
        cos = torch.nn.functional.cosine_similarity(vectors, exact)
        rows.append(dict(engine=f"turboseq {name}", mean_cosine=cos.mean().item(), min_cosine=cos.min().item()))
    return rows


def run_quality(compute_types: list[str], archs=TRAINED_ARCHS, n: int = 200, log=print) -> dict:
    """Every measure above; returns {name: rows} and logs a markdown table per model."""
    results = {}
    for arch in archs:
        model_dir = trained_model(arch)
        rows = (_seq2seq_quality if arch in SEQ2SEQ else _causal_quality)(model_dir, compute_types, n, log)
        results[f"trained-{arch}"] = rows
        log(f"\n{arch} (trained on the synthetic task, {n} held-out inputs)\n" + format_rows(rows))
    rows = whisper_quality(compute_types, log=log)
    results["whisper-tiny.en"] = rows
    log("\nWhisper tiny.en (real weights), espeak-ng clips, greedy\n" + format_rows(rows))
    rows = encoder_quality(compute_types, log=log)
    results["all-MiniLM-L6-v2"] = rows
    log("\nall-MiniLM-L6-v2 (real weights), 200 sentences\n" + format_rows(rows))
    return results


def format_rows(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k != "engine"]
    lines = ["| engine | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for r in rows:
        cells = ["-" if r.get(k) is None else f"{r[k]:.4f}" for k in keys]
        lines.append(f"| {r['engine']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
