"""Every engine in its own fresh process, rounds alternating, best of N, with the spread shown.

PyTorch and CTranslate2 in one process slow each other down (PyTorch's small parallel ops ~15% after CTranslate2
has run; faster-whisper 1.45x beside PyTorch), and a shared machine disturbs single runs. So the seq2seq and
decoder-only benches run each engine alone: ``turboseq bench ... --engines E --rounds 1`` in a child process per
engine and round, the engines' order reversed every other round, and a cell's figure is its best round. The
spread (min / median / max over rounds) is printed with it, and a cell whose rounds differ by more than
``WIDE`` is flagged as too noisy to trust.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

WIDE = 0.10  # (max - min) / max over rounds above which a cell is flagged


@dataclass(frozen=True)
class Spread:
    low: float
    median: float
    high: float
    rounds: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(min(values), statistics.median(values), max(values), len(values))

    @property
    def wide(self) -> bool:
        return self.high > 0 and (self.high - self.low) / self.high > WIDE

    def text(self) -> str:
        flag = "  ! spread over 10%: rerun on a quieter machine" if self.wide else ""
        return f"(min / median / max over {self.rounds} rounds: {self.low:.1f} / {self.median:.1f} / {self.high:.1f}){flag}"


def run_engine(argv: Sequence[str], engine: str, out_dir: Path, result: str, timeout: float = 3600) -> list[dict]:
    """One engine's cells from a fresh ``turboseq bench`` process (``argv``: the bench's options, without
    ``--engines``, ``--rounds`` and ``--out``); a failing child raises with the end of its output."""
    cmd = [sys.executable, "-m", "turboseq.cli", "bench", *argv, "--engines", engine, "--rounds", "1"]
    cmd += ["--out", str(out_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"bench of {engine} failed in its own process (exit {done.returncode}):\n{tail}")
    return json.loads((out_dir / result).read_text())


def best_of_rounds(
    argv: Sequence[str],
    engines: Sequence[str],
    rounds: int,
    result: str,
    key: Callable[[dict], tuple],
    value: str,
    log=print,
) -> list[tuple[dict, Spread]]:
    """Every engine ``rounds`` times, each in its own process, the order reversed every other round; per cell
    (``key``), the round with the highest ``value`` and the spread of ``value`` over the rounds."""
    runs: dict[tuple, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="turboseq-bench-") as tmp:
        for r in range(rounds):
            order = list(engines) if r % 2 == 0 else list(reversed(engines))
            for engine in order:
                start = time.perf_counter()
                cells = run_engine(argv, engine, Path(tmp) / f"{engine}-{r}", result)
                for cell in cells:
                    runs.setdefault((cell["engine"], *key(cell)), []).append(cell)
                figures = ", ".join(f"{c[value]:.1f}" for c in cells)
                log(f"round {r + 1}/{rounds} {engine:22} {figures}  ({time.perf_counter() - start:.0f} s)")
    out = []
    for cells in runs.values():
        best = max(cells, key=lambda c: c[value])
        out.append((best, Spread.of([c[value] for c in cells])))
    return out


def spread_note(spreads: Sequence[Spread]) -> str:
    """A line under a table: how many rounds, and which cells were too noisy."""
    wide = sum(s.wide for s in spreads)
    rounds = max((s.rounds for s in spreads), default=0)
    note = f"best of {rounds} rounds, each engine in its own process"
    if wide:
        note += f"; {wide} cell(s) marked * varied more than {WIDE:.0%} between rounds: rerun before trusting them"
    return note
