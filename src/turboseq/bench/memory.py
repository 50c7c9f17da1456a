"""Memory and start-up per engine, each in a fresh process (memory freed by one model stays mapped in a process,
so side-by-side loads would blur the figures).

- Resident memory after load and the peak during it: turboseq's measured on a second load (the libraries a first
  load pulls in are not counted), CTranslate2's on its first (its libraries load with the import); the kernel's
  peak counter is reset before the measured load.
- Start-up: a fresh process's load plus its first translation of one sentence, in seconds above the time the
  engine's own runtime takes to import (``import torch``; ``import ctranslate2``). turboseq is byte-compiled
  first, as pip does on install: an editable checkout run with ``PYTHONDONTWRITEBYTECODE`` would otherwise
  compile its modules again in every probe (0.14-0.18 s of each on an AMD EPYC Zen 3).
- The KV cache a batch holds, computed from the spec (self-attention buffers and cross-attention K/V).
"""

from __future__ import annotations

import compileall
import functools
import json
import subprocess
import sys
from pathlib import Path

# the probe's own process: resident memory and its peak since the last reset, in bytes
_STATUS = """
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
"""

_PROBE = (
    """
import json, sys, torch
import turboseq
from turboseq.runtime.compute import weight_bytes
"""
    + _STATUS
    + """
import gc
from turboseq.runtime.memory import release_free_memory

options = {} if sys.argv[2] == "stored" else {"compute_type": sys.argv[2]}
# a first load pulls in the libraries (transformers' config code, oneDNN, fbgemm): measure a second one
model = turboseq.load(sys.argv[1], **options)
del model
gc.collect()
release_free_memory()
before = status("VmRSS")
reset_peak()
model = turboseq.load(sys.argv[1], **options)
print(json.dumps({"rss": status("VmRSS") - before, "peak": status("VmHWM") - before,
                  "weights": weight_bytes(model.spec)}))
"""
)


_CT2_PROBE = (
    """
import json, sys
import ctranslate2
"""
    + _STATUS
    + """
kind = getattr(ctranslate2, sys.argv[3])
options = dict(device="cpu", compute_type=sys.argv[2], intra_threads=1)
# the first load: CTranslate2's libraries are initialized at import, and memory a deleted model held is not all
# given back at once (a second load measured 197 MB for an int8 model holding 114 MB)
before = status("VmRSS")
reset_peak()
model = kind(sys.argv[1], **options)
print(json.dumps({"rss": status("VmRSS") - before, "peak": status("VmHWM") - before}))
"""
)

_STARTUP = """
import json, sys, time
start = time.perf_counter()
import torch
imported = time.perf_counter()
import turboseq
options = {} if sys.argv[2] == "stored" else {"compute_type": sys.argv[2]}
model = turboseq.load(sys.argv[1], **options)
loaded = time.perf_counter()
model.translate([sys.argv[3]], max_new_tokens=int(sys.argv[4]), num_beams=int(sys.argv[5]))
done = time.perf_counter()
print(json.dumps({"runtime_import": imported - start, "load": loaded - imported, "first": done - loaded}))
"""

_CT2_STARTUP = """
import json, sys, time
start = time.perf_counter()
import ctranslate2
imported = time.perf_counter()
model = ctranslate2.Translator(sys.argv[1], device="cpu", compute_type=sys.argv[2])
loaded = time.perf_counter()
model.translate_batch([json.loads(sys.argv[3])], max_decoding_length=int(sys.argv[4]), beam_size=int(sys.argv[5]))
done = time.perf_counter()
print(json.dumps({"runtime_import": imported - start, "load": loaded - imported, "first": done - loaded}))
"""


def _run_probe(script: str, *args: str) -> dict:
    """Run a probe in a fresh Python process; its last line of output is its figures as JSON."""
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ct2_memory_after_load(ct2_dir: Path, compute_type: str, kind: str = "Translator") -> dict:
    """``rss_mb`` and ``peak_mb`` a CTranslate2 ``kind`` ("Translator" or "Generator") adds on load, measured as
    ``memory_after_load`` measures turboseq's."""
    figures = _run_probe(_CT2_PROBE, str(ct2_dir), compute_type, kind)
    return dict(rss_mb=figures["rss"] / 2**20, peak_mb=figures["peak"] / 2**20)


def engine_memory(
    model_dir: Path, ct2_dir: Path | None, engines: list[tuple[str, str]], kind: str = "Translator"
) -> list[dict]:
    """``rss_mb``, ``peak_mb`` and ``weights_mb`` (None for CTranslate2's) per (engine, compute type): turboseq
    engines loaded in their compute type ("stored": ``model_dir`` is a converted directory), ``ctranslate2-*``
    engines when ``ct2_dir`` is given."""
    rows = []
    for engine, compute_type in engines:
        if engine.startswith("turboseq"):
            rows.append(dict(engine=engine, **memory_after_load(model_dir, [compute_type])[0]))
        elif engine.startswith("ctranslate2-") and ct2_dir is not None:
            figures = ct2_memory_after_load(ct2_dir, compute_type, kind)
            rows.append(dict(engine=engine, compute_type=compute_type, weights_mb=None, **figures))
    return rows


def format_engine_memory(rows: list[dict]) -> str:
    lines = [
        "| engine | resident after load (MB) | peak during load (MB) | weights as held (MB) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        weights = "" if r["weights_mb"] is None else f"{r['weights_mb']:.0f}"
        lines.append(f"| {r['engine']} | {r['rss_mb']:.0f} | {r['peak_mb']:.0f} | {weights} |")
    return "\n".join(lines)


def memory_after_load(model_dir: Path, compute_types: list[str]) -> list[dict]:
    """Per compute type: ``rss_mb`` (resident memory the load added), ``peak_mb`` (the most it held during the
    load) and ``weights_mb`` (what the weights hold as the runtime uses them, ``runtime.compute.weight_bytes``)."""
    rows = []
    for name in compute_types:
        figures = _run_probe(_PROBE, str(model_dir), name)
        rows.append(
            dict(
                compute_type=name,
                rss_mb=figures["rss"] / 2**20,
                peak_mb=figures["peak"] / 2**20,
                weights_mb=figures["weights"] / 2**20,
            )
        )
    return rows


def format_memory_table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["compute_type"] == "float32"), rows[0])
    lines = ["| compute type | resident after load (MB) | weights (MB) | weights / float32 |", "|---|---|---|---|"]
    for r in rows:
        share = r["weights_mb"] / base["weights_mb"]
        lines.append(f"| {r['compute_type']} | {r['rss_mb']:.0f} | {r['weights_mb']:.0f} | {share:.2f} |")
    return "\n".join(lines)


@functools.cache
def _byte_compiled() -> None:
    """turboseq's modules byte-compiled where they lie (a pip install's are already)."""
    compileall.compile_dir(str(Path(__file__).resolve().parent.parent), quiet=2)


def startup(model_dir: Path, compute_type: str, sentence: str, new_tokens: int, num_beams: int = 4) -> dict:
    """Seconds of a fresh process: ``runtime_import`` (``import torch``), ``load`` (import turboseq and load)
    and ``first`` (one translation of ``sentence``, ``new_tokens`` at most, ``num_beams`` beams)."""
    _byte_compiled()
    return _run_probe(_STARTUP, str(model_dir), compute_type, sentence, str(new_tokens), str(num_beams))


def ct2_startup(ct2_dir: Path, compute_type: str, tokens: list[str], new_tokens: int, num_beams: int = 4) -> dict:
    """``startup`` for a CTranslate2 Translator given the sentence's tokens (its tokenizer is not counted)."""
    return _run_probe(_CT2_STARTUP, str(ct2_dir), compute_type, json.dumps(tokens), str(new_tokens), str(num_beams))


def format_startup(rows: list[dict]) -> str:
    lines = [
        "| engine | runtime import (s) | load (s) | first translation (s) | load + first, above the import (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        total = r["load"] + r["first"]
        lines.append(
            f"| {r['engine']} | {r['runtime_import']:.2f} | {r['load']:.2f} | {r['first']:.2f} | {total:.2f} |"
        )
    return "\n".join(lines)


def kv_cache_mb(spec, attention_bytes: int, rows: int, source_len: int, target_len: int) -> float:
    """MB a batch of ``rows`` decoder rows holds in its cache at ``target_len`` positions: the self-attention
    buffers (grown by doubling from 64, ``runtime.cache``) and, for encoder-decoders, the cross-attention K/V of
    ``source_len`` positions (one entry per row here: greedy)."""
    capacity = 64
    while capacity < target_len:
        capacity *= 2
    total = 0
    for layer in spec.decoder.layers:
        attn = layer.self_attn
        total += 2 * rows * capacity * attn.kv_heads * attn.head_dim
        if getattr(layer, "cross_attn", None) is not None:
            total += 2 * rows * source_len * layer.cross_attn.kv.weight.shape[0] // 2
    return total * attention_bytes / 2**20
