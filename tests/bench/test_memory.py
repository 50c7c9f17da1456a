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
    assert all(r["rss_mb"] >= 0 and r["peak_mb"] >= r["rss_mb"] * 0.9 for r in rows)
    table = format_engine_memory(rows + [dict(engine="ctranslate2-int8", rss_mb=12.4, peak_mb=13.6, weights_mb=None)])
    assert table.splitlines()[-1] == "| ctranslate2-int8 | 12 | 14 |  |"


def test_startup_and_kv_cache_figures(marian_one):
    from turboseq.bench.memory import format_startup, kv_cache_mb, startup

    model, path = marian_one
    figures = startup(path, "float32", "A cat sat on the mat.", 4)
    assert set(figures) == {"runtime_import", "load", "first"} and all(v > 0 for v in figures.values())
    line = format_startup([dict(engine="turboseq", runtime_import=1.234, load=0.5, first=0.25)]).splitlines()[-1]
    assert line == "| turboseq | 1.23 | 0.50 | 0.25 | 0.75 |"
    # per decoder layer: self-attention K and V of 64 positions (the first capacity), cross-attention K and V
    spec = model.spec
    layers, d_model = len(spec.decoder.layers), spec.d_model
    expected = layers * (2 * 16 * 64 * d_model + 2 * 16 * 32 * d_model) * 4 / 2**20
    assert kv_cache_mb(spec, 4, 16, 32, 32) == expected
