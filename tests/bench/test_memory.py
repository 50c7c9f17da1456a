"""The bench's memory figures: each engine's load measured in a fresh process."""

from tests.helpers import make_marian_with_tokenizer


def test_engine_memory_rows_per_engine(tmp_path):
    from turboseq.bench.memory import engine_memory, format_engine_memory

    make_marian_with_tokenizer(tmp_path, "swish-untied-4h")
    engines = [
        ("turboseq", "float32"),
        ("turboseq-int8", "int8"),
        ("transformers", "float32"),
        ("ctranslate2-int8", "int8"),
    ]
    rows = engine_memory(tmp_path, None, engines)
    assert [r["engine"] for r in rows] == ["turboseq", "turboseq-int8"]  # no CTranslate2 directory given
    assert [r["compute_type"] for r in rows] == ["float32", "int8"]
    assert rows[1]["weights_mb"] < 0.5 * rows[0]["weights_mb"]
    assert all(r["rss_mb"] >= 0 for r in rows)
    table = format_engine_memory(rows + [dict(engine="ctranslate2-int8", rss_mb=12.4, weights_mb=None)])
    assert table.splitlines()[-1] == "| ctranslate2-int8 | 12 |  |"
