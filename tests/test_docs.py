"""The docs cannot drift from the code: every Python snippet in the README and in docs/ runs, page by page in
one namespace, on the tiny test models (the paths a snippet names are mapped to them). A snippet preceded by an
HTML comment (``<!-- not run: why -->``, or ``<!-- standalone-loop -->``, which tests/export runs) is skipped."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(<!--[^\n]*-->\n)?```python\n(.*?)```", re.S)


def snippets(page: Path) -> list[str]:
    return [code for marker, code in FENCE.findall(page.read_text(encoding="utf-8")) if not marker]


def test_the_docs_have_snippets_to_run():
    runnable = {p.name: len(snippets(p)) for p in PAGES}
    for name in ("README.md", "text-generation.md", "speech.md", "encoders.md", "getting-started.md"):
        assert runnable[name] >= 1, runnable


@pytest.fixture(scope="module")
def doc_paths(marian_one, gpt2_text, minilm, ct2_dir, clips, tmp_path_factory):
    """Where each path a snippet names really is, and a working directory holding the audio files they read."""
    from tests.helpers import make_family_model, wav_bytes
    from turboseq.bench.models import build_t5_tokenizer
    from turboseq.formats.audio import load_audio

    t5 = tmp_path_factory.mktemp("docs-t5")
    make_family_model(t5, "t5", vocab_size=1104, seed=4)
    build_t5_tokenizer(t5)
    cwd = tmp_path_factory.mktemp("docs-cwd")
    for name, clip in zip(("meeting.wav", "a.wav", "b.wav", "c.wav", "clip.wav"), clips):
        shutil.copy(clip, cwd / name)
    from turboseq.export.encoder import export_encoder

    export_encoder(minilm[0], cwd / "minilm.pt2")
    long = np.concatenate([load_audio(c) for c in clips] * 3)
    (cwd / "long.wav").write_bytes(wav_bytes(long))
    paths = {
        "path/to/opus-mt-en-de": marian_one[1],
        "path/to/flan-t5-small": t5,
        "path/to/gpt2": gpt2_text[3],
        "path/to/all-MiniLM-L6-v2": minilm[3],
        "path/to/faster-whisper-tiny.en": ct2_dir,
    }
    return paths, cwd


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_snippets_run(page, doc_paths, monkeypatch):
    paths, cwd = doc_paths
    monkeypatch.chdir(cwd)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for code in snippets(page):
        for placeholder, real in paths.items():
            code = code.replace(f'"{placeholder}"', repr(str(real)))
        assert "path/to/" not in code, f"{page.name}: a path the test does not map:\n{code}"
        exec(compile(code, f"{page.name} snippet", "exec"), namespace)
