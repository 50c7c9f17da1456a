"""Resident memory after load, per compute type: each in a fresh process (memory freed by one model stays
mapped in a process, so side-by-side loads would blur the figures), measured on a second load so that the
libraries a first load pulls in are not counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# resident memory of the probe's own process, in bytes
_RSS = """
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
"""

_PROBE = (
    """
import json, sys, torch
import turboseq
from turboseq.runtime.compute import weight_bytes
"""
    + _RSS
    + """
import gc
from turboseq.runtime.memory import release_free_memory

# a first load pulls in the libraries (transformers' config code, oneDNN, fbgemm): measure a second one
model = turboseq.load(sys.argv[1], compute_type=sys.argv[2])
del model
gc.collect()
release_free_memory()
before = rss()
model = turboseq.load(sys.argv[1], compute_type=sys.argv[2])
print(json.dumps({"rss": rss() - before, "weights": weight_bytes(model.spec)}))
"""
)


_CT2_PROBE = (
    """
import json, sys
import ctranslate2
"""
    + _RSS
    + """
kind = getattr(ctranslate2, sys.argv[3])
options = dict(device="cpu", compute_type=sys.argv[2], intra_threads=1)
model = kind(sys.argv[1], **options)  # the first load initializes the libraries: measure a second one
del model
before = rss()
model = kind(sys.argv[1], **options)
print(json.dumps({"rss": rss() - before}))
"""
)


def _run_probe(script: str, *args: str) -> dict:
    """Run a probe in a fresh Python process; its last line of output is its figures as JSON."""
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ct2_memory_after_load(ct2_dir: Path, compute_type: str, kind: str = "Translator") -> float:
    """Resident memory (MB) a CTranslate2 ``kind`` ("Translator" or "Generator") adds on load, measured as
    ``memory_after_load`` measures turboseq's."""
    return _run_probe(_CT2_PROBE, str(ct2_dir), compute_type, kind)["rss"] / 2**20


def engine_memory(
    model_dir: Path, ct2_dir: Path | None, engines: list[tuple[str, str]], kind: str = "Translator"
) -> list[dict]:
    """``rss_mb`` per (engine, compute type), ``weights_mb`` for turboseq's (None for CTranslate2's): turboseq
    engines loaded in their compute type, ``ctranslate2-*`` engines when ``ct2_dir`` is given."""
    rows = []
    for engine, compute_type in engines:
        if engine.startswith("turboseq"):
            rows.append(dict(engine=engine, **memory_after_load(model_dir, [compute_type])[0]))
        elif engine.startswith("ctranslate2-") and ct2_dir is not None:
            rss = ct2_memory_after_load(ct2_dir, compute_type, kind)
            rows.append(dict(engine=engine, compute_type=compute_type, rss_mb=rss, weights_mb=None))
    return rows


def format_engine_memory(rows: list[dict]) -> str:
    lines = ["| engine | resident after load (MB) | weights as held (MB) |", "|---|---|---|"]
    for r in rows:
        weights = "" if r["weights_mb"] is None else f"{r['weights_mb']:.0f}"
        lines.append(f"| {r['engine']} | {r['rss_mb']:.0f} | {weights} |")
    return "\n".join(lines)


def memory_after_load(model_dir: Path, compute_types: list[str]) -> list[dict]:
    """Per compute type: ``rss_mb`` (resident memory the load added) and ``weights_mb`` (what the weights hold
    as the runtime uses them, ``runtime.compute.weight_bytes``)."""
    rows = []
    for name in compute_types:
        figures = _run_probe(_PROBE, str(model_dir), name)
        rows.append(dict(compute_type=name, rss_mb=figures["rss"] / 2**20, weights_mb=figures["weights"] / 2**20))
    return rows


def format_memory_table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["compute_type"] == "float32"), rows[0])
    lines = ["| compute type | resident after load (MB) | weights (MB) | weights / float32 |", "|---|---|---|---|"]
    for r in rows:
        share = r["weights_mb"] / base["weights_mb"]
        lines.append(f"| {r['compute_type']} | {r['rss_mb']:.0f} | {r['weights_mb']:.0f} | {share:.2f} |")
    return "\n".join(lines)
