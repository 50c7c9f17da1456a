"""Side-by-side throughput of decoder-only generation: transformers (eager, and with its static cache),
turboseq and CTranslate2's Generator (float32, int8) on the same random-init weights, in one process.

Every engine continues the same random prompts (``prompt`` tokens each) by exactly ``new_tokens`` tokens
(EOS banned until then), greedy. Prefill is timed as the call that generates one token; decode as the rest:
prefill tokens/s = batch x prompt / t(1 token), decode tokens/s = batch x (new - 1) / (t(new) - t(1)).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from turboseq.bench.models import cache_root, ct2_converted
from turboseq.bench.rounds import best_of_rounds, spread_note
from turboseq.bench.seq2seq import compute_type_of, ratio_pairs, turboseq_engines
from turboseq.bench.timing import machine, median_seconds

GPT2_SMALL = dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)
# SmolLM-135M's shape: 30 layers of width 576, 9 query heads over 3 key/value heads, tied head
SMOLLM_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=2048,
    vocab_size=49152,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=0,
    eos_token_id=0,
)
CAUSAL_ARCHS = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", GPT2_SMALL),
    "llama-small": ("LlamaForCausalLM", "LlamaConfig", SMOLLM_135M),
}
PEERS = ("transformers", "transformers-static", "ctranslate2-float32", "ctranslate2-int8")


@dataclass
class Cell:
    engine: str
    batch: int
    prompt: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    tokens_per_s: float  # new tokens over the whole call


def causal_model_dir(arch: str) -> Path:
    """The cached bench model for ``arch`` (transformers' own init, seed 0), built on first use, with a
    GPT-2-style tokenizer of its vocabulary size (CTranslate2's converter reads the vocabulary)."""

    import transformers

    from turboseq.bench.models import BENCH_VERSION, build_gpt2_tokenizer, publish, staging

    model_cls, config_cls, config = CAUSAL_ARCHS[arch]
    path = cache_root() / f"bench-{arch}-{BENCH_VERSION}"
    if (path / "config.json").is_file():
        return path
    tmp = staging(path)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config)).eval()
    model.save_pretrained(tmp)
    build_gpt2_tokenizer(tmp, config["vocab_size"])
    return publish(tmp, path)


def available_engines() -> list[str]:
    engines = [*PEERS[:2], *turboseq_engines(), *PEERS[2:]]
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        return [e for e in engines if not e.startswith("ctranslate2")]
    return engines


class Engines:
    def __init__(self, model_dir: Path, engines: list[str]):
        from turboseq.load import load

        self.model_dir, self.engines = model_dir, engines
        self.ts = load(model_dir)
        self.fast = {e: load(model_dir, compute_type=compute_type_of(e)) for e in engines if e.startswith("turboseq-")}
        self.eos = self.ts.settings().eos_token_ids
        self.hf = None
        if any(e.startswith("transformers") for e in engines):
            from transformers import AutoModelForCausalLM
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            self.hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.ct2: dict = {}

    def _ct2(self, engine: str):
        import ctranslate2

        if engine not in self.ct2:
            self.ct2[engine] = ctranslate2.Generator(
                str(ct2_converted(self.model_dir)),
                device="cpu",
                compute_type=engine.split("-", 1)[1],
                intra_threads=torch.get_num_threads(),
            )
        return self.ct2[engine]

    def runner(self, engine: str, ids: torch.Tensor, new_tokens: int):
        """A zero-argument callable generating ``new_tokens`` greedy tokens after every prompt of ``ids``."""
        if engine.startswith("transformers"):
            extra = {"cache_implementation": "static"} if engine == "transformers-static" else {}

            def run():
                with torch.inference_mode():
                    return self.hf.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        min_new_tokens=new_tokens,
                        max_new_tokens=new_tokens,
                        do_sample=False,
                        pad_token_id=self.eos[0],
                        **extra,
                    )

        elif engine.startswith("turboseq"):
            rows = ids.tolist()
            model = self.fast.get(engine, self.ts)

            def run():
                return model.generate_rows(rows, min_new_tokens=new_tokens, max_new_tokens=new_tokens)

        else:
            generator = self._ct2(engine)
            tokens = [self.ts.tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()]

            def run():
                return generator.generate_batch(
                    tokens,
                    max_length=new_tokens,
                    min_length=new_tokens,
                    include_prompt_in_result=False,
                    beam_size=1,
                )

        return run


def check_equal_work(engines: Engines, ids: torch.Tensor, new_tokens: int) -> None:
    """Every engine must return exactly ``new_tokens`` per prompt, or the comparison is not fair."""
    for engine in engines.engines:
        out = engines.runner(engine, ids, new_tokens)()
        if engine.startswith("transformers"):
            counts = [out.shape[1] - ids.shape[1]] * ids.shape[0]
        elif engine.startswith("turboseq"):
            counts = [len(seqs[0]) - ids.shape[1] for seqs in out]
        else:
            counts = [len(r.sequences_ids[0]) for r in out]
        if set(counts) != {new_tokens}:
            raise RuntimeError(f"{engine} generated {counts} tokens instead of {new_tokens} per prompt")


def run_causal_bench(
    arch: str,
    batches: list[int],
    prompts: list[int],
    engines: list[str],
    new_tokens: int,
    min_seconds: float,
    out_dir: Path,
    rounds: int = 1,
) -> list[Cell]:
    """Every engine over prompts x batches; with ``rounds`` > 1, each engine in its own process per round
    (``bench.rounds``) and each cell's best round, its spread printed and a noisy cell marked."""
    if rounds > 1:
        return _in_own_processes(arch, batches, prompts, engines, new_tokens, min_seconds, out_dir, rounds)
    print(machine(), flush=True)
    model_dir = causal_model_dir(arch)
    bench = Engines(model_dir, engines)
    vocab = bench.ts.spec.vocab_size
    cells: list[Cell] = []
    g = torch.Generator().manual_seed(0)
    for prompt in prompts:
        for batch in batches:
            ids = torch.randint(0, vocab - 1, (batch, prompt), generator=g)
            ids[ids == bench.eos[0]] = 1
            check_equal_work(bench, ids, new_tokens)
            for engine in engines:
                first = median_seconds(bench.runner(engine, ids, 1), 1, min_seconds / 4)
                whole = median_seconds(bench.runner(engine, ids, new_tokens), 1, min_seconds)
                cell = Cell(
                    engine,
                    batch,
                    prompt,
                    prefill_tokens_per_s=batch * prompt / first,
                    decode_tokens_per_s=batch * (new_tokens - 1) / max(whole - first, 1e-9),
                    tokens_per_s=batch * new_tokens / whole,
                )
                cells.append(cell)
                print(
                    f"{arch} prompt {prompt:4d} batch {batch:3d} {engine:22s} prefill {cell.prefill_tokens_per_s:9.0f} "
                    f"tok/s  decode {cell.decode_tokens_per_s:7.1f} tok/s  overall {cell.tokens_per_s:7.1f} tok/s",
                    flush=True,
                )
    _write(arch, cells, new_tokens, out_dir)
    return cells


def _in_own_processes(arch, batches, prompts, engines, new_tokens, min_seconds, out_dir: Path, rounds: int):
    argv = ["--arch", arch, "--batches", ",".join(map(str, batches)), "--prompts", ",".join(map(str, prompts))]
    argv += ["--new-tokens", str(new_tokens), "--min-seconds", str(min_seconds)]
    print(machine(), flush=True)
    print(f"{arch}: {rounds} rounds, each engine in its own process", flush=True)
    log = partial(print, flush=True)
    results = best_of_rounds(
        argv, engines, rounds, f"bench-{arch}.json", lambda c: (c["prompt"], c["batch"]), "tokens_per_s", log
    )
    order = {e: i for i, e in enumerate(engines)}
    results.sort(key=lambda r: (r[0]["prompt"], r[0]["batch"], order[r[0]["engine"]]))
    cells, spreads = [], {}
    for best, spread in results:
        cell = Cell(**best)
        cells.append(cell)
        spreads[(cell.engine, cell.prompt, cell.batch)] = spread
        print(
            f"{arch} prompt {cell.prompt:4d} batch {cell.batch:3d} {cell.engine:22s} {cell.tokens_per_s:7.1f} tok/s  {spread.text()}"
        )
    _write(arch, cells, new_tokens, out_dir, spreads)
    return cells


def _write(arch: str, cells: list[Cell], new_tokens: int, out_dir: Path, spreads=None) -> None:
    table = markdown(arch, cells, new_tokens, spreads)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [asdict(c) for c in cells]
    if spreads:
        rows = [{**r, "spread": asdict(spreads[(c.engine, c.prompt, c.batch)])} for r, c in zip(rows, cells)]
    (out_dir / f"bench-{arch}.json").write_text(json.dumps(rows, indent=2))
    (out_dir / f"bench-{arch}.md").write_text(f"{machine()}\n\n{table}")
    print(table)


def markdown(arch: str, cells: list[Cell], new_tokens: int, spreads=None) -> str:
    """The table (``*``: a cell whose rounds varied too much), with the ratios to the peers."""
    spreads = spreads or {}
    engines = list(dict.fromkeys(c.engine for c in cells))
    pairs = ratio_pairs(engines)
    lines = [
        f"{arch}: {new_tokens} new tokens per prompt, greedy; tokens/s overall (prefill / decode)",
        "",
        "| prompt | batch | " + " | ".join(engines + [f"{x} / {y}" for x, y in pairs]) + " |",
        "|---|---|" + "---|" * (len(engines) + len(pairs)),
    ]
    keys = list(dict.fromkeys((c.prompt, c.batch) for c in cells))
    for prompt, batch in keys:
        row = {c.engine: c for c in cells if (c.prompt, c.batch) == (prompt, batch)}
        parts = [
            f"{row[e].tokens_per_s:.0f} ({row[e].prefill_tokens_per_s:.0f} / {row[e].decode_tokens_per_s:.0f})"
            + ("*" if (s := spreads.get((e, prompt, batch))) is not None and s.wide else "")
            if e in row
            else "-"
            for e in engines
        ]
        parts += [
            f"{row[x].tokens_per_s / row[y].tokens_per_s:.2f}x" if x in row and y in row else "-" for x, y in pairs
        ]
        lines.append(f"| {prompt} | {batch} | " + " | ".join(parts) + " |")
    if spreads:
        lines += ["", spread_note(list(spreads.values()))]
    return "\n".join(lines) + "\n"
