"""Side-by-side throughput: transformers vs turboseq (vs CTranslate2 when installed), in one process.

Every engine decodes the same tokenized sentences with a forced output length (min = max new tokens), so
all do equal work; the figure is target tokens per second (returned sequences only, not beams).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from turboseq.bench.models import bench_model_dir, bench_sentences, ct2_converted
from turboseq.bench.rounds import best_of_rounds, spread_note
from turboseq.bench.timing import machine, median_seconds
from turboseq.formats.tokenizer import load_tokenizer

MODES = {"greedy": 1, "beam4": 4}
# turboseq's float32 model exported to a file (``turboseq export``), and with ``--compile``: built once per model
# directory and cached; asked for by name (``--engines``), as compiling takes minutes
ARTIFACT_ENGINES = ("turboseq-exported", "turboseq-compiled")


@dataclass
class Cell:
    engine: str
    batch: int
    mode: str
    seconds: float
    tokens_per_s: float


def _inputs(tokenizer, batch: int):
    sentences = bench_sentences()
    texts = [sentences[i % len(sentences)] for i in range(batch)]
    return tokenizer(texts, return_tensors="pt", padding=True)


class Engines:
    """Builds each engine once; ``runner(engine, enc, beams, new_tokens)`` returns a zero-arg callable."""

    def __init__(self, model_dir: Path, engines: list[str]):
        from turboseq.load import load

        self.model_dir = model_dir
        # turboseq in each compute type named: "turboseq" (float32), "turboseq-int8", ...; and its exports
        self.ts = {
            e: _artifact(model_dir, e) if e in ARTIFACT_ENGINES else load(model_dir, compute_type=compute_type_of(e))
            for e in engines
            if e.startswith("turboseq")
        }
        self.tokenizer = load_tokenizer(model_dir)
        self.hf = None
        self.ct2 = {}
        if "transformers" in engines:
            from transformers import AutoModelForSeq2SeqLM
            from transformers.utils import logging as hf_logging

            # the forced length sets max_new_tokens next to the checkpoint's max_length: silence that notice
            hf_logging.set_verbosity_error()
            self.hf = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()

    def _ct2(self, engine: str):
        """The CTranslate2 translator, converted and loaded on first use (after the PyTorch engines ran)."""
        import ctranslate2

        if engine not in self.ct2:
            self.ct2[engine] = ctranslate2.Translator(
                str(ct2_converted(self.model_dir)),
                device="cpu",
                compute_type=engine.split("-", 1)[1],
                intra_threads=torch.get_num_threads(),
            )
        return self.ct2[engine]

    def runner(self, engine: str, enc, beams: int, new_tokens: int):
        lengths = dict(min_new_tokens=new_tokens, max_new_tokens=new_tokens)
        if engine == "transformers":

            def run():
                with torch.inference_mode():
                    return self.hf.generate(**enc, num_beams=beams, **lengths)

        elif engine.startswith("turboseq"):
            model = self.ts[engine]

            def run():
                return model.generate(
                    enc["input_ids"], enc["attention_mask"], num_beams=beams, max_batch_size=None, **lengths
                )

        else:
            translator = self._ct2(engine)
            tokens = [
                self.tokenizer.convert_ids_to_tokens(ids[m.bool()].tolist())
                for ids, m in zip(enc["input_ids"], enc["attention_mask"])
            ]

            def run():
                return translator.translate_batch(
                    tokens,
                    beam_size=beams,
                    max_decoding_length=new_tokens,
                    min_decoding_length=new_tokens,
                    max_batch_size=len(tokens),
                )

        return run


def compute_type_of(engine: str) -> str:
    """``turboseq`` runs float32, ``turboseq-<type>`` that compute type (the exports: float32)."""
    return engine.split("-", 1)[1] if "-" in engine and engine not in ARTIFACT_ENGINES else "float32"


def _artifact(model_dir: Path, engine: str):
    """The bench model exported (``turboseq-exported``) or exported and compiled (``turboseq-compiled``),
    built on first use and kept beside the other bench caches."""
    from turboseq.bench.models import cache_root
    from turboseq.export.writer import export_generation
    from turboseq.load import load

    compiled = engine == "turboseq-compiled"
    path = cache_root() / "exports" / f"{model_dir.name}-{engine.split('-', 1)[1]}.pt2"
    if not path.is_file():
        info = export_generation(load(model_dir), path, compile=compiled)
        print(f"exported {path} ({info['bytes'] / 1e6:.0f} MB, compiled in {info['compile_seconds']:.0f} s)")
    return load(path, trust_compiled_code=compiled)  # built here, by this process


def turboseq_engines() -> list[str]:
    from turboseq.runtime.compute import supported_compute_types

    return ["turboseq"] + [f"turboseq-{name}" for name in supported_compute_types() if name != "float32"]


def available_engines() -> list[str]:
    engines = ["transformers", *turboseq_engines()]
    try:
        import ctranslate2  # noqa: F401

        engines += ["ctranslate2-float32", "ctranslate2-int8"]
    except ImportError:
        pass
    return engines


def run_bench(
    arch: str = "marian",
    batches=(1, 16, 64),
    modes=("greedy", "beam4"),
    engines: list[str] | None = None,
    new_tokens: int = 32,
    min_runs: int = 3,
    min_seconds: float = 2.0,
    out_dir: Path | None = None,
    profile: bool = False,
    log=print,
) -> list[Cell]:
    engines = engines or available_engines()
    model_dir = bench_model_dir(arch)
    eng = Engines(model_dir, engines)
    log(machine())
    log(f"arch: {arch} | model: {model_dir} | forced length: {new_tokens} tokens")
    cells = []
    # engine by engine: once CTranslate2 has run in a process, PyTorch's small parallel ops there run about
    # 15% slower (measured here; its bundled OpenMP runtime stays loaded), so the PyTorch engines go first
    for engine in sorted(engines, key=lambda e: e.startswith("ctranslate2")):
        for mode in modes:
            for batch in batches:
                enc = _inputs(eng.tokenizer, batch)
                seconds = median_seconds(eng.runner(engine, enc, MODES[mode], new_tokens), min_runs, min_seconds)
                cell = Cell(engine, batch, mode, seconds, batch * new_tokens / seconds)
                cells.append(cell)
                log(f"  {engine:20} {mode:6} batch {batch:3} {cell.tokens_per_s:9.1f} tok/s")
    if profile:
        log(profile_report(eng, new_tokens))
    report(cells, engines, arch, out_dir, log)
    return cells


def run_bench_rounds(
    arch: str,
    batches,
    modes,
    engines: list[str],
    new_tokens: int,
    min_seconds: float,
    rounds: int,
    out_dir: Path | None,
    log=print,
) -> list[Cell]:
    """``run_bench`` with every engine in its own process, ``rounds`` times, the order alternating
    (``bench.rounds``): each cell's best round, its spread printed and a noisy cell marked."""
    argv = ["--arch", arch, "--batches", ",".join(map(str, batches)), "--modes", ",".join(modes)]
    argv += ["--new-tokens", str(new_tokens), "--min-seconds", str(min_seconds)]
    log(machine())
    log(f"arch: {arch} | forced length: {new_tokens} tokens | {rounds} rounds, each engine in its own process")
    results = best_of_rounds(
        argv, engines, rounds, "bench.json", lambda c: (c["mode"], c["batch"]), "tokens_per_s", log
    )
    cells, spreads = [], {}
    for best, spread in results:
        cell = Cell(**best)
        cells.append(cell)
        spreads[(cell.engine, cell.mode, cell.batch)] = spread
    order = {e: i for i, e in enumerate(engines)}
    cells.sort(key=lambda c: (order[c.engine], list(MODES).index(c.mode), c.batch))
    for c in cells:
        log(
            f"  {c.engine:20} {c.mode:6} batch {c.batch:3} {c.tokens_per_s:9.1f} tok/s  {spreads[(c.engine, c.mode, c.batch)].text()}"
        )
    report(cells, engines, arch, out_dir, log, spreads)
    floors(arch, engines, max(batches), new_tokens, log)
    memory(arch, engines, log)
    return cells


def memory(arch: str, engines: list[str], log=print) -> None:
    """Each engine's model in a fresh process (``bench.memory``): resident memory after load and its peak during
    the load (turboseq's reduced types also from a ``turboseq convert`` directory), the start-up of load plus a
    first translation, and the KV cache a batch holds."""
    from turboseq.bench.memory import (
        ct2_startup,
        engine_memory,
        format_engine_memory,
        format_startup,
        kv_cache_mb,
        startup,
    )
    from turboseq.load import load

    model_dir = bench_model_dir(arch)
    ct2_dir = ct2_converted(model_dir) if any(e.startswith("ctranslate2-") for e in engines) else None
    measured = [
        (e, compute_type_of(e) if e.startswith("turboseq") else e.split("-", 1)[1])
        for e in engines
        if e.startswith(("turboseq", "ctranslate2-")) and e not in ARTIFACT_ENGINES
    ]
    converted = {e: _converted(model_dir, ct) for e, ct in measured if e.startswith("turboseq") and ct != "float32"}
    log("\nmemory (MB above the runtime's own; resident after load, peak during it; each engine in a fresh process):")
    rows = engine_memory(model_dir, ct2_dir, measured)
    for engine, path in converted.items():
        rows += [dict(r, engine=f"{engine} (converted)") for r in engine_memory(path, None, [(engine, "stored")])]
    log(format_engine_memory(rows))

    sentence, new_tokens = bench_sentences()[0], 16
    log(
        f"\nstart-up (fresh processes, best of 3; load, then one sentence translated, beam 4, {new_tokens} tokens at most):"
    )
    tokenizer = load_tokenizer(model_dir)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(sentence)["input_ids"])
    probes = []  # (engine, a fresh process's figures)
    for engine, ct in measured:
        if engine.startswith("turboseq"):
            probes.append((engine, lambda ct=ct: startup(model_dir, ct, sentence, new_tokens)))
            if engine in converted:
                path = converted[engine]
                probes.append((f"{engine} (converted)", lambda p=path: startup(p, "stored", sentence, new_tokens)))
        elif ct2_dir is not None:
            probes.append((engine, lambda ct=ct: ct2_startup(ct2_dir, ct, tokens, new_tokens)))
    best: dict[str, dict] = {}
    for _round in range(3):  # rounds alternate engines; each keeps its fastest load + first translation
        for engine, probe in probes:
            figures = probe()
            if engine not in best or figures["load"] + figures["first"] < best[engine]["load"] + best[engine]["first"]:
                best[engine] = figures
    starts = [dict(engine=engine, **best[engine]) for engine, _probe in probes]
    log(format_startup(starts))

    spec = load(model_dir).spec
    log("\nKV cache of a batch (greedy, 32 source and 32 target positions), MB by attention precision:")
    log("| rows | float32 (float32, int8) | bfloat16 (bfloat16, int8_bfloat16) |\n|---|---|---|")
    for rows in (16, 64):
        log(f"| {rows} | {kv_cache_mb(spec, 4, rows, 32, 32):.1f} | {kv_cache_mb(spec, 2, rows, 32, 32):.1f} |")


def _converted(model_dir: Path, compute_type: str) -> Path:
    """``model_dir`` converted to ``compute_type`` (``turboseq convert``) beside the other bench caches, once."""
    from turboseq.bench.models import cache_root
    from turboseq.load import convert

    path = cache_root() / "converted" / f"{model_dir.name}-{compute_type}"
    if not (path / "turboseq.json").is_file():
        import shutil

        shutil.rmtree(path, ignore_errors=True)  # an interrupted conversion
        convert(model_dir, path, compute_type)
    return path


def floors(arch: str, engines: list[str], batch: int, new_tokens: int, log=print) -> None:
    """Each turboseq engine's greedy decode step at ``batch`` rows against its GEMM floor (``bench.floor``),
    one engine loaded at a time in this process (no CTranslate2 here)."""
    from turboseq.bench.floor import measure
    from turboseq.load import load

    model_dir = bench_model_dir(arch)
    enc = _inputs(load_tokenizer(model_dir), batch)
    log(f"\ndecode step against its GEMM floor (greedy, {batch} rows):")
    for engine in engines:
        if engine.startswith("turboseq") and engine not in ARTIFACT_ENGINES:
            model = load(model_dir, compute_type=compute_type_of(engine))
            log(f"  {engine:20} {measure(model, enc['input_ids'], enc['attention_mask'], new_tokens).text()}")
            del model


def report(cells: list[Cell], engines: list[str], arch: str, out_dir: Path | None, log, spreads=None) -> None:
    """The table (noisy cells marked when ``spreads`` are known), and bench.json/md/png under ``out_dir``."""
    table = format_table(cells, engines, spreads)
    if spreads:
        table += f"\n\n{spread_note(list(spreads.values()))}"
    log("\n" + table)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = [{**asdict(c), **_spread_fields(spreads, c)} for c in cells]
        (out_dir / "bench.json").write_text(json.dumps(rows, indent=2))
        (out_dir / "bench.md").write_text(f"{machine()}\n\n{table}\n")
        plot(cells, engines, out_dir / "bench.png", arch)
        log(f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.md'}, {out_dir / 'bench.png'}")


def _spread_fields(spreads, cell: Cell) -> dict:
    spread = (spreads or {}).get((cell.engine, cell.mode, cell.batch))
    return {} if spread is None else {"spread": asdict(spread)}


def ratio_pairs(engines: list[str]) -> list[tuple[str, str]]:
    """The ratios a table shows: float32 turboseq against every peer, and each reduced compute type against
    CTranslate2 int8 (the fast engine CPU users pick)."""
    pairs = [("turboseq", e) for e in engines if not e.startswith("turboseq") and "turboseq" in engines]
    peer = next((e for e in engines if e.endswith("-int8") and not e.startswith("turboseq")), None)
    if peer is not None:
        pairs += [(e, peer) for e in engines if e.startswith("turboseq-") and e not in ARTIFACT_ENGINES]
    if "turboseq" in engines:  # an export against the eager model it came from
        pairs += [(e, "turboseq") for e in engines if e in ARTIFACT_ENGINES]
    return pairs


def format_table(cells: list[Cell], engines: list[str], spreads=None) -> str:
    """Markdown: tokens/s per engine (``*``: a cell whose rounds varied too much) and the ratios of
    ``ratio_pairs``."""
    spreads = spreads or {}
    pairs = ratio_pairs(engines)
    head = ["mode", "batch"] + [f"{e} tok/s" for e in engines] + [f"{a} / {b}" for a, b in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = sorted({(c.mode, c.batch) for c in cells}, key=lambda k: (list(MODES).index(k[0]), k[1]))
    for mode, batch in keys:
        by = {c.engine: c.tokens_per_s for c in cells if c.mode == mode and c.batch == batch}
        marks = {e: "*" if (s := spreads.get((e, mode, batch))) is not None and s.wide else "" for e in engines}
        row = [mode, str(batch)] + [f"{by[e]:.1f}{marks[e]}" if e in by else "-" for e in engines]
        row += [f"{by[a] / by[b]:.2f}x" if a in by and b in by else "-" for a, b in pairs]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(cells: list[Cell], engines: list[str], path: Path, arch: str = "marian") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(c.mode, c.batch) for c in cells}, key=lambda k: (list(MODES).index(k[0]), k[1]))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(engines)
    for j, engine in enumerate(engines):
        values = [next((c.tokens_per_s for c in cells if (c.mode, c.batch, c.engine) == (*k, engine)), 0) for k in keys]
        ax.bar([i + j * width for i in range(len(keys))], values, width, label=engine)
    ax.set_xticks([i + width * (len(engines) - 1) / 2 for i in range(len(keys))])
    ax.set_xticklabels([f"{m}\nbatch {b}" for m, b in keys])
    ax.set_ylabel("target tokens / s")
    shape = "MarianMT (opus-mt-en-de shape)" if arch == "marian" else f"{arch} shape"
    ax.set_title(f"{shape}, random weights, float32 unless named, CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def profile_report(eng: Engines, new_tokens: int, batch: int = 16, beams: int = 4, top: int = 15) -> str:
    """Top operators by self CPU time for the slow path (transformers) and the fast path (turboseq)."""
    from torch.profiler import ProfilerActivity, profile

    enc = _inputs(eng.tokenizer, batch)
    parts = []
    for engine in ("transformers", "turboseq"):
        if engine == "transformers" and eng.hf is None:
            continue
        run = eng.runner(engine, enc, beams, new_tokens)
        run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
        parts.append(f"\n== {engine}: batch {batch}, beam {beams}, top {top} operators by self CPU time ==\n{table}")
    return "\n".join(parts)
