"""Language detection and translation on a multilingual Whisper. Only English weights exist here, so the model
is random-init with tiny.en's shapes and vocabulary (which holds every language token), marked multilingual in
its generation config: this checks the plumbing (prompt, language tokens, probabilities) against transformers,
not the quality of detection."""

import json
import shutil

import numpy as np
import pytest
import torch

import turboseq
from turboseq.formats.audio import log_mel, log_mel_long, window_features


@pytest.fixture(scope="module")
def multilingual(hf_whisper, tmp_path_factory):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    src = hf_whisper[1]
    out = tmp_path_factory.mktemp("whisper-multilingual")
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig.from_pretrained(src)).eval()
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
    vocab = json.loads((src / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    config = json.loads((src / "generation_config.json").read_text())  # tiny.en's, made multilingual
    config.pop("_from_model_config", None)
    config.update(
        is_multilingual=True,
        lang_to_id={name: i for name, i in ids.items() if ids["<|startoftranscript|>"] < i < ids["<|translate|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        alignment_heads=[[2, 1], [3, 0]],
    )
    (out / "generation_config.json").write_text(json.dumps(config))
    return turboseq.load(out), WhisperForConditionalGeneration.from_pretrained(out).eval(), out


def _hf_language_probs(hf, feats, lang_ids):
    with torch.inference_mode():
        sot = hf.generation_config.decoder_start_token_id
        logits = hf(input_features=feats, decoder_input_ids=torch.full((feats.shape[0], 1), sot)).logits[:, -1]
    return logits[:, lang_ids].softmax(dim=-1)


def test_detect_language_matches_transformers(multilingual, waves):
    model, hf, _ = multilingual
    feats = log_mel(waves[:4])
    codes = model.whisper_text.language_ids()
    lang_ids = list(codes.values())
    expected = _hf_language_probs(hf, feats, lang_ids)
    with torch.inference_mode():
        detected = hf.detect_language(input_features=feats).reshape(-1).tolist()
    for i in range(4):
        language, probability, ranked = model.detect_language(features=feats[i])
        assert codes[language] == detected[i]
        got = dict(ranked)
        np.testing.assert_allclose([got[c] for c in codes], expected[i].numpy(), atol=1e-5)
        assert probability == pytest.approx(float(expected[i].max()), abs=1e-5)
        assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True) and len(ranked) == 99


@pytest.mark.parametrize(
    "kwargs",
    [{"language": "de", "task": "translate"}, {"language": "fr"}, {"language": "<|es|>", "return_timestamps": True}],
    ids=["de-translate", "fr", "es-timestamps"],
)
def test_generate_with_language_and_task_matches_transformers(multilingual, waves, kwargs):
    model, hf, _ = multilingual
    feats = log_mel(waves[:3])
    with torch.inference_mode():
        expected = hf.generate(feats, max_new_tokens=6, **kwargs)
    assert torch.equal(model.generate(feats, max_new_tokens=6, **kwargs), expected)


def test_transcribe_detects_the_language_and_translates(multilingual, waves):
    model, _, _ = multilingual
    text = model.whisper_text
    wave = waves[1]
    language, probability, ranked = model.detect_language(wave)
    result = model.transcribe(
        wave, task="translate", beam_size=1, temperature=0.0, max_new_tokens=8, without_timestamps=True
    )
    assert (result.language, result.language_probability, result.all_language_probs) == (
        language,
        probability,
        ranked,
    )
    # the window's prompt is <|startoftranscript|> <|language|> <|translate|> <|notimestamps|>; eight new tokens
    # at most, of which CTranslate2's budget keeps min(12 // 2, 12 - 3) = 6
    feats = window_features(log_mel_long(wave, model.n_mels), 0, 3000)[None]
    expected = model.generate(
        feats,
        language=language,
        task="translate",
        max_new_tokens=6,
        suppress_tokens=text.suppress_tokens([-1]),
        begin_suppress_tokens=text.encode(" ") + [text.eot],
    )[0]
    expected = expected[expected != model.spec.pad_token_id].tolist()
    assert [t for s in result.segments for t in s.tokens] == expected
    with pytest.raises(ValueError, match="unknown `language` 'xx'"):
        model.transcribe(wave, language="xx")
    with pytest.raises(ValueError, match="`task` must be one of transcribe, translate"):
        model.transcribe(wave, task="summarize")


def test_language_detection_segments_vote(multilingual, whisper, waves):
    """Over several 30 s windows, the first whose best language passes the threshold decides; with a threshold
    nothing passes, the language most often on top wins, as in faster-whisper."""
    model, _, _ = multilingual
    audio = np.concatenate([waves[0], np.zeros(16000 * 28, np.float32), waves[1], waves[2]])
    feats = log_mel_long(audio, model.n_mels)
    windows = [model.detect_language(features=feats[:, start:]) for start in (0, 3000)]
    language, _, _ = model.detect_language(audio, language_detection_segments=2, language_detection_threshold=1.0)
    tops = [w[0] for w in windows]
    assert language in tops and (tops[0] != tops[1] or language == tops[0])
    first, probability, _ = model.detect_language(
        audio, language_detection_segments=2, language_detection_threshold=0.0
    )
    assert (first, probability) == windows[0][:2]
    with pytest.raises(ValueError, match="detect_language needs a multilingual Whisper model"):
        whisper.detect_language(audio)


def test_the_openai_sdk_translates_speech(multilingual, clips):
    """``/v1/audio/translations`` runs ``transcribe(task="translate")`` (random weights: the plumbing, not the
    English; their low log-probabilities make every window fall back to sampling, so the text is not compared).
    ``--max-new-tokens`` cuts a window's budget where a request sets none."""
    import openai

    from turboseq.serving.process import ServerProcess

    model, _, path = multilingual
    with ServerProcess(path, "--max-new-tokens", "8") as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        got = client.audio.translations.create(
            model="whisper-1", file=clips[0].open("rb"), response_format="verbose_json"
        )
        assert got.task == "translate" and got.language == model.detect_language(clips[0])[0]
        assert got.segments and all(
            len(s.tokens) <= 6 for s in got.segments
        )  # the budget of 8: CTranslate2's half, see above
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            client.audio.translations.with_raw_response.create(
                model="w", file=clips[0].open("rb"), extra_body={"language": "de"}
            )
        assert "unknown field(s): language" in str(caught.value.body)
