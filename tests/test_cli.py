"""The command line: every verb against its library call, one-line errors for every wrong input, help."""

import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import run_cli
from tests.models.test_encoder import TEXTS as EMBED_TEXTS
from tests.models.test_text import TEXTS
from turboseq.models.glossary import phrase_ids


def test_cli_translate_stdin_stdout_keeps_lines(marian_one):
    model, path = marian_one
    lines = ["Thank you very much for your help.", "", "Is there a bank near the station?"]
    res = run_cli(
        "translate", "--model", str(path), "--max-new-tokens", "6", "--num-beams", "2", stdin="\n".join(lines) + "\n"
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout.split("\n")[:-1]
    assert out == model.translate(lines, max_new_tokens=6, num_beams=2)


def test_cli_translate_files_with_progress(marian_one, tmp_path):
    model, path = marian_one
    src = tmp_path / "in.txt"
    src.write_text("Hello.\n\nGood morning, everyone.\n")
    dst = tmp_path / "out.txt"
    res = run_cli(
        "translate", "--model", str(path), "-i", str(src), "-o", str(dst), "--max-new-tokens", "4", "--batch-size", "1"
    )
    assert res.returncode == 0, res.stderr
    assert "translate" in res.stderr and "3/3" in res.stderr  # tqdm progress bar
    assert dst.read_text().split("\n")[:-1] == model.translate(
        ["Hello.", "", "Good morning, everyone."], max_new_tokens=4
    )


def test_cli_errors_are_one_line(tmp_path):
    res = run_cli("translate", "--model", str(tmp_path / "missing"), stdin="Hello\n")
    assert res.returncode == 2
    assert res.stderr.strip() == f"turboseq: error: {tmp_path / 'missing'}: no such model directory"
    res = run_cli("translate", "--model", str(tmp_path), "--num-beams", "0")
    assert res.returncode == 2 and "must be >= 1" in res.stderr


def test_cli_help_lists_verbs_and_options():
    res = run_cli("--help")
    assert res.returncode == 0 and "translate" in res.stdout and "bench" in res.stdout
    res = run_cli("translate", "--help")
    for option in ("--model", "--num-beams", "--max-new-tokens", "--batch-size", "--dtype", "-i", "-o"):
        assert option in res.stdout
    res = run_cli("bench", "--help")
    for option in ("--arch", "--batches", "--modes", "--engines", "--profile", "--out"):
        assert option in res.stdout


def test_cli_generate(text_model, tmp_path, capsys):
    from turboseq.cli import main

    model, _, _, path = text_model
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    args = ["--model", str(path), "-i", str(src), "-o", str(out), "--num-beams", "2", "--max-new-tokens", "8"]
    assert main(["generate", *args, "--no-progress"]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines == model.generate_text(TEXTS, num_beams=2, max_new_tokens=8)
    assert main(["translate", *args, "--no-progress"]) == 0
    assert out.read_text(encoding="utf-8").splitlines() == lines


def test_cli_embed(minilm, tmp_path):
    from turboseq.cli import main

    model, _, _, path = minilm
    src = tmp_path / "in.txt"
    src.write_text("\n".join(EMBED_TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["embed", "--model", str(path), "-i", str(src), "-o", str(out), "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(EMBED_TEXTS)
    assert torch.allclose(torch.tensor(rows), model.embed(EMBED_TEXTS), atol=1e-6)


def test_transcriberun_cli(ct2_dir, clips, tmp_path):
    cli = [sys.executable, "-m", "turboseq.cli", "transcribe", "--model", str(ct2_dir)]
    out = subprocess.run(
        cli + [str(clips[2]), str(clips[3]), "--format", "json"], capture_output=True, text=True, check=True
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(clips[2]), str(clips[3])]
    assert "raining" in rows[0]["text"].lower() and rows[0]["segments"]
    out = subprocess.run(
        cli + [str(clips[0]), "--format", "srt", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (tmp_path / f"{clips[0].stem}.srt").read_text().startswith("1\n00:00:0")
    bad = subprocess.run(cli + [str(tmp_path / "missing.wav")], capture_output=True, text=True)
    assert bad.returncode == 2 and "missing.wav: no such file" in bad.stderr
    both = subprocess.run(cli + [str(clips[0]), str(clips[1]), "--format", "vtt"], capture_output=True, text=True)
    assert both.returncode == 2 and "--output-dir" in both.stderr


def test_transcribe_cli_options(ct2_dir, clips, whisper, tmp_path):
    cli = [sys.executable, "-m", "turboseq.cli", "transcribe", "--model", str(ct2_dir), "--no-progress"]
    options = ["--beam-size", "1", "--temperature", "0,0.5", "--vad-filter", "--initial-prompt", "Stella"]
    out = subprocess.run(
        cli + [str(clips[1]), "--format", "json", "--word-timestamps", *options],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    expected = whisper.transcribe(
        clips[1], beam_size=1, temperature=[0, 0.5], vad_filter=True, initial_prompt="Stella", word_timestamps=True
    )
    assert row["text"] == expected.text and row["duration_after_vad"] == round(expected.duration_after_vad, 3)
    words = [w for seg in row["segments"] for w in seg["words"]]
    assert [w["word"] for w in words] == [w.word for s in expected.segments for w in s.words]
    assert {"avg_logprob", "no_speech_prob", "compression_ratio", "temperature", "seek"} <= set(row["segments"][0])
    subprocess.run(cli + [str(clips[0]), "--format", "srt", "--word-level", "--output-dir", str(tmp_path)], check=True)
    cues = (tmp_path / f"{clips[0].stem}.srt").read_text().strip().split("\n\n")
    assert len(cues) >= 8 and cues[1].split("\n")[2] == "quick"
    for flags, message in (
        (["--temperature", "hot"], "expected a number or comma-separated numbers"),
        (["--vad-parameters", "[1]"], "expected a JSON object"),
        (["--vad-filter", "--vad-parameters", '{"speed": 1}'], "unknown `vad_parameters` key(s): speed"),
        (["--language", "de"], "English-only"),
    ):
        bad = subprocess.run(cli + [str(clips[0]), *flags], capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_cli_export_then_embed_with_the_export(minilm, tmp_path):
    import turboseq
    from turboseq.cli import main

    model, _, _, path = minilm
    out = tmp_path / "minilm.pt2"
    assert main(["export", "--model", str(path), "--out", str(out)]) == 0
    assert type(turboseq.load(out)).__name__ == "ExportedEncoder"
    src = tmp_path / "in.txt"
    src.write_text("A man is eating food.\n", encoding="utf-8")
    assert main(["embed", "--model", str(out), "-i", str(src), "-o", str(tmp_path / "out.jsonl")]) == 0
    vector = torch.tensor(json.loads((tmp_path / "out.jsonl").read_text()))
    assert torch.nn.functional.cosine_similarity(vector[None], model.embed(["A man is eating food."])).item() > 0.99999
    assert main(["embed", "--model", str(out), "--normalize", "yes", "-i", str(src)]) == 2


@pytest.fixture(scope="module")
def model_dirs(marian_one, minilm, ct2_dir, tmp_path_factory):
    """One directory of each kind, plus a file that is no model."""
    not_a_model = tmp_path_factory.mktemp("files") / "notes.txt"
    not_a_model.write_text("not a model\n")
    return {"seq2seq": marian_one[1], "encoder": minilm[3], "speech": ct2_dir, "file": not_a_model}


WRONG_KIND = [
    (
        "translate",
        "speech",
        "a speech-to-text (Whisper) model (whisper); `turboseq translate` does not serve it "
        "(its verbs: turboseq transcribe, turboseq export, turboseq serve, turboseq batch)",
    ),
    (
        "generate",
        "encoder",
        "an encoder (embedding) model (bert); `turboseq generate` does not serve it "
        "(its verbs: turboseq embed, turboseq export, turboseq serve, turboseq batch)",
    ),
    (
        "embed",
        "seq2seq",
        "a text-to-text model (marian); `turboseq embed` does not serve it "
        "(its verbs: turboseq translate, turboseq generate, turboseq export, turboseq serve, turboseq batch)",
    ),
    ("transcribe", "seq2seq", "a text-to-text model (marian); `turboseq transcribe` does not serve it"),
    ("embed", "speech", "`turboseq embed` does not serve it"),
]


def _verb_args(verb: str, model, tmp_path) -> list:
    if verb == "transcribe":
        audio = tmp_path / "a.wav"
        audio.write_bytes(b"RIFF")  # never read: the model is refused first
        return [verb, "--model", model, audio]
    if verb == "export":
        return [verb, "--model", model, "--out", tmp_path / "x.pt2"]
    if verb == "serve":
        return [verb, "--model", model, "--port", "1"]
    if verb == "batch":
        return [verb, "--model", model, "--input", tmp_path / "in.jsonl", "--output", tmp_path / "out"]
    return [verb, "--model", model]


@pytest.mark.parametrize("verb, kind, words", WRONG_KIND)
def test_a_verb_refuses_the_wrong_kind_of_model_in_one_line(model_dirs, tmp_path, verb, kind, words):
    res = run_cli(*_verb_args(verb, model_dirs[kind], tmp_path), stdin="Hello\n")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith(f"turboseq: error: {model_dirs[kind]} is ") and words in res.stderr


@pytest.mark.parametrize("verb", ["translate", "generate", "transcribe", "embed", "export", "serve", "batch"])
def test_every_verb_gives_one_line_for_a_missing_dir_or_a_file(model_dirs, tmp_path, verb):
    missing = tmp_path / "missing"
    res = run_cli(*_verb_args(verb, missing, tmp_path), stdin="Hello\n")
    assert (res.returncode, res.stderr) == (2, f"turboseq: error: {missing}: no such model directory\n")
    file = model_dirs["file"]
    res = run_cli(*_verb_args(verb, file, tmp_path), stdin="Hello\n")
    assert res.returncode == 2
    assert res.stderr == (
        f"turboseq: error: {file}: a file, but not a turboseq export (expected a model directory, "
        "or a .pt2 file written by `turboseq export`)\n"
    )


def test_input_that_is_not_utf8_is_named(marian_one, tmp_path):
    _, path = marian_one
    res = run_cli("translate", "--model", path, stdin=b"Hello \xff\xfe world\n")
    assert (res.returncode, res.stderr) == (
        2,
        "turboseq: error: stdin: not UTF-8 text (invalid start byte at byte 6)\n",
    )
    binary = tmp_path / "in.bin"
    binary.write_bytes(b"\x00\x01\xff")
    res = run_cli("translate", "--model", path, "-i", binary)
    assert (res.returncode, res.stderr) == (
        2,
        f"turboseq: error: {binary}: not UTF-8 text (invalid start byte at byte 2)\n",
    )


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--port", "99999"], "argument --port: must be a port number in 0-65535, got 99999"),
        (["--request-timeout-s", "0"], "argument --request-timeout-s: must be > 0, got 0"),
        (["--timeout-per-audio-second", "-1"], "argument --timeout-per-audio-second: must be >= 0, got -1"),
        (["--batch-wait-ms", "-5"], "argument --batch-wait-ms: must be >= 0 and <= 10000, got -5"),
        (["--header-timeout-s", "nan"], "argument --header-timeout-s: must be > 0"),
        (["--max-beams", "0"], "argument --max-beams: must be >= 1, got 0"),
    ],
)
def test_serve_flags_are_checked_before_the_model_loads(tmp_path, flags, words):
    res = run_cli("serve", "--model", tmp_path / "not-even-there", *flags)
    assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr


def test_weights_that_do_not_match_the_config_fail_at_load_in_one_line(marian_one, tmp_path):
    _, good = marian_one
    for name in ("generation_config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((good / name).read_bytes())
    config = json.loads((good / "config.json").read_text())
    config["d_model"] = 32  # the weights are 64 wide
    (tmp_path / "config.json").write_text(json.dumps(config))
    res = run_cli("translate", "--model", tmp_path, stdin="Hello\n")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert f"{tmp_path / 'config.json'}: the weights do not match the config: encoder positions has shape" in res.stderr


def test_cli_generate_continues_prompts(gpt2_text, tmp_path):
    model, _, _, path = gpt2_text
    prompts = ["The weather is nice today.", "", "I would like a cup of coffee"]
    out = run_cli("generate", "--model", path, "--max-new-tokens", "6", stdin="\n".join(prompts) + "\n")
    assert out.returncode == 0, out.stderr
    expected = [t.replace("\n", " ") for t in model.generate_text(prompts, max_new_tokens=6)]
    assert out.stdout.splitlines() == expected
    out = run_cli("translate", "--model", path, stdin="hi\n")
    assert out.returncode == 2
    assert "is a text-generation (decoder-only) model (gpt2); `turboseq translate` does not serve it" in out.stderr


def test_cli_translate_with_a_glossary(marian_one, tmp_path):
    """--glossary (a JSON object or tab-separated lines) and --keep-spans: as ``translate(glossary=...)``."""
    model, path = marian_one
    term = next(w for w in ["Zug", "Bahnhof", "der", "station"] if phrase_ids(model.tokenizer, w) is not None)
    lines = ["The train leaves at eight.", "Good morning."]
    expected = model.translate(lines, glossary={"train": term}, keep_spans=True, max_new_tokens=8)
    assert term in expected[0]
    for name, text in [("g.json", json.dumps({"train": term})), ("g.tsv", f"# terms\ntrain\t{term}\n")]:
        (tmp_path / name).write_text(text)
        res = run_cli(
            "translate", "--model", str(path), "--glossary", str(tmp_path / name), "--keep-spans",
            "--max-new-tokens", "8", stdin="\n".join(lines) + "\n",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert res.stdout.split("\n")[:-1] == expected
    (tmp_path / "bad.tsv").write_text("train Zug\n")
    res = run_cli("translate", "--model", str(path), "--glossary", str(tmp_path / "bad.tsv"), stdin="x\n")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"turboseq: error: {tmp_path / 'bad.tsv'}:1: a glossary line is a source term, a tab and its target term"
    )
