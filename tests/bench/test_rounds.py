"""The bench's own-process protocol (``bench.rounds``): rounds alternate the engines' order, a cell's figure is
its best round, the spread is kept and a noisy cell is flagged; a child that fails says why."""

from pathlib import Path

import pytest

from turboseq.bench import rounds
from turboseq.bench.rounds import Spread


def test_best_of_rounds_alternates_and_keeps_the_best(monkeypatch):
    calls = []
    figures = {("a", 0): 100.0, ("b", 0): 50.0, ("b", 1): 55.0, ("a", 1): 80.0, ("a", 2): 99.0, ("b", 2): 54.0}

    def fake(argv, engine, out_dir: Path, result):
        r = int(out_dir.name.rsplit("-", 1)[1])
        calls.append((engine, r))
        assert argv == ["--arch", "x"] and result == "bench.json"
        return [{"engine": engine, "batch": 1, "tokens_per_s": figures[(engine, r)], "seconds": 1.0}]

    monkeypatch.setattr(rounds, "run_engine", fake)
    lines = []
    out = rounds.best_of_rounds(
        ["--arch", "x"], ["a", "b"], 3, "bench.json", lambda c: (c["batch"],), "tokens_per_s", lines.append
    )
    assert calls == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2)]
    best = {cell["engine"]: (cell["tokens_per_s"], spread) for cell, spread in out}
    assert best["a"] == (100.0, Spread(80.0, 99.0, 100.0, 3)) and best["a"][1].wide  # 20% apart
    assert best["b"] == (55.0, Spread(50.0, 54.0, 55.0, 3)) and not best["b"][1].wide  # 9% apart
    assert len(lines) == 6 and lines[0].startswith("round 1/3 a")
    note = rounds.spread_note([best["a"][1], best["b"][1]])
    assert note == (
        "best of 3 rounds, each engine in its own process; 1 cell(s) marked * varied more than 10% between rounds: "
        "rerun before trusting them"
    )
    assert "! spread over 10%" in best["a"][1].text() and "!" not in best["b"][1].text()


def test_a_failing_child_says_why(tmp_path):
    with pytest.raises(RuntimeError) as err:
        rounds.run_engine(["--arch", "no-such-arch"], "turboseq", tmp_path, "bench.json")
    message = str(err.value)
    assert message.startswith("bench of turboseq failed in its own process (exit 2):")
    assert "invalid choice: 'no-such-arch'" in message


def test_longform_engines_name_their_compute_types():
    from turboseq.bench import longform

    assert longform.check_engines(("turboseq-bfloat16", "faster-whisper-int8")) == (
        "turboseq-bfloat16",
        "faster-whisper-int8",
    )
    assert [longform.engine_compute_type(e) for e in ("turboseq", "turboseq-int8", "faster-whisper-float32")] == [
        "float32",
        "int8",
        "float32",
    ]
    with pytest.raises(ValueError, match="one turboseq engine with one faster-whisper engine"):
        longform.check_engines(("turboseq", "turboseq-int8"))
