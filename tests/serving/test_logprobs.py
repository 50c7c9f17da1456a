"""Log-probabilities over HTTP: TGI's ``details`` and ``top_n_tokens`` (``POST /``, ``/generate_stream``) and
OpenAI's ``logprobs`` (``/v1/completions``, plain and streamed, through the real ``openai`` SDK), each equal to
the library's ``compute_transition_scores(..., normalize_logits=True)`` for the same request."""

import json
import math

import httpx
import pytest
import torch

from turboseq.serving.process import ServerProcess

SOURCES = ["The train to Berlin leaves at half past eight.", "Could you tell me where the pharmacy is?"]


@pytest.fixture(scope="module")
def mt_server(marian_one):
    _, path = marian_one
    srv = ServerProcess(path, "--max-batch-size", "4")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def lm_server(gpt2_text):
    srv = ServerProcess(gpt2_text[3], "--max-batch-size", "4", "--max-new-tokens", "40")
    yield srv
    srv.stop()


def _reference(model, texts, **kwargs):
    """Per input: (generated token ids, their log-probabilities, the top-3 ids at each step)."""
    enc = model.tokenizer(texts, return_tensors="pt", padding=len(texts) > 1)
    out = model.generate(
        enc["input_ids"], enc["attention_mask"], return_dict_in_generate=True, output_scores=True, **kwargs
    )
    scores = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    steps = torch.stack(out.scores, 1).log_softmax(-1)  # [batch, steps, vocab]
    start = out.sequences.shape[1] - len(out.scores)
    result = []
    eos = set(model.settings().eos_token_ids)
    for i in range(len(texts)):
        ids = out.sequences[i, start:].tolist()
        n = next((k + 1 for k, t in enumerate(ids) if t in eos), len(ids))
        result.append((ids[:n], scores[i, :n].tolist(), steps[i, :n].topk(3).indices.tolist()))
    return result


def _events(text: str) -> list:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ") and line[6:] != "[DONE]"]


def _check(tokens, expected, text=None):
    ids, logprobs, tops = expected
    assert [t["id"] for t in tokens] == ids
    assert [t["logprob"] for t in tokens] == pytest.approx(logprobs, abs=1e-4)
    if text is not None:
        assert "".join(t["text"] for t in tokens) == text


@pytest.mark.parametrize("sampled", [False, True])
def test_tgi_details_equal_transition_scores(mt_server, marian_one, sampled):
    model, _ = marian_one
    params = {"max_new_tokens": 12, "min_new_tokens": 6, "num_beams": 1}
    if sampled:
        params.update(do_sample=True, top_k=20, temperature=0.8, seed=5)
    texts = SOURCES if not sampled else SOURCES[:1]  # a seed means the request's own draws
    body = {"inputs": texts, "parameters": {**params, "details": True, "top_n_tokens": 3}}
    r = httpx.post(mt_server.url + "/", json=body)
    assert r.status_code == 200, r.text
    expected = _reference(model, texts, **params)
    for answer, ref in zip(r.json(), expected):
        details = answer["details"]
        _check(details["tokens"], ref, answer["translation_text"])
        assert details["generated_tokens"] == len(ref[0]) and details["prefill"] == []
        assert [[t["id"] for t in step] for step in details["top_tokens"]] == ref[2]
        assert details["seed"] == params.get("seed")
        if not sampled:  # greedy: the chosen token is the most likely one
            assert [step[0]["id"] for step in details["top_tokens"]] == ref[0]


def test_tgi_details_of_beam_search_equal_transition_scores(mt_server, marian_one):
    """Beam search: the best hypothesis' tokens with the scores at the beam each extended, as
    ``compute_transition_scores(sequences, scores, beam_indices)`` reads them, and the top tokens there."""
    model, _ = marian_one
    params = {"max_new_tokens": 12, "min_new_tokens": 6, "num_beams": 4, "no_repeat_ngram_size": 2}
    body = {"inputs": SOURCES, "parameters": {**params, "details": True, "top_n_tokens": 3}}
    r = httpx.post(mt_server.url + "/", json=body)
    assert r.status_code == 200, r.text
    enc = model.tokenizer(SOURCES, return_tensors="pt", padding=True)
    out = model.generate(
        enc["input_ids"], enc["attention_mask"], return_dict_in_generate=True, output_scores=True, **params
    )
    scores = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices)
    eos = set(model.settings().eos_token_ids)
    for i, answer in enumerate(r.json()):
        ids = out.sequences[i, 1:].tolist()
        n = next(k + 1 for k, t in enumerate(ids) if t in eos)
        steps = [out.scores[t][out.beam_indices[i, t]].topk(3) for t in range(n)]
        # tokens the logits rules ruled out (here, all but EOS at the last step) are not listed
        tops = [[k for k, v in zip(top.indices.tolist(), top.values.tolist()) if v > -math.inf] for top in steps]
        details = answer["details"]
        _check(details["tokens"], (ids[:n], scores[i, :n].tolist(), tops), answer["translation_text"])
        assert [[t["id"] for t in step] for step in details["top_tokens"]] == tops
        assert answer["translation_text"] == model.translate([SOURCES[i]], **params)[0]


def test_tgi_stream_carries_logprobs(mt_server, marian_one):
    model, _ = marian_one
    params = {"max_new_tokens": 12, "min_new_tokens": 6, "num_beams": 1}
    body = {"inputs": SOURCES[0], "parameters": {**params, "details": True, "top_n_tokens": 2}}
    events = _events(httpx.post(mt_server.url + "/generate_stream", json=body).text)
    tokens = [e["token"] for e in events if "token" in e]
    (ref,) = _reference(model, SOURCES[:1], **params)
    _check(tokens, ref, events[-1]["generated_text"])
    assert all(len(e["top_tokens"]) == 2 for e in events if "token" in e)
    # without details the stream is as before: no logprob
    plain = _events(
        httpx.post(mt_server.url + "/generate_stream", json={"inputs": SOURCES[0]} | {"parameters": params}).text
    )
    assert "logprob" not in plain[0]["token"]


def test_details_refusals(mt_server):
    def error(params):
        r = httpx.post(mt_server.url + "/", json={"inputs": "x", "parameters": params})
        return r.status_code, r.json()["error"]

    assert error({"details": True, "num_beams": 4, "num_return_sequences": 2}) == (
        422,
        "log-probabilities need one sequence per input (num_return_sequences=1)",
    )
    assert error({"top_n_tokens": 6, "num_beams": 1}) == (422, "`top_n_tokens` must be an integer from 0 to 5")
    assert error({"decoder_input_details": True}) == (
        422,
        "`decoder_input_details` (the prompt's log-probabilities) is not supported yet",
    )


def test_decoder_only_beam_details_equal_transition_scores(lm_server, gpt2_text):
    model = gpt2_text[0]
    prompts = ["The weather today is", "Hello there, my old friend"]  # of different lengths: left-padded
    params = {"max_new_tokens": 10, "num_beams": 3}
    body = {"inputs": prompts, "parameters": {**params, "details": True, "top_n_tokens": 2}}
    r = httpx.post(lm_server.url + "/", json=body)
    assert r.status_code == 200, r.text
    eos = set(model.settings().eos_token_ids)
    for prompt, answer in zip(prompts, r.json()):
        enc = model.tokenizer([prompt], return_tensors="pt")
        out = model.generate(enc["input_ids"], return_dict_in_generate=True, output_scores=True, **params)
        scores = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices)[0]
        ids = out.sequences[0, enc["input_ids"].shape[1] :].tolist()
        n = next((k + 1 for k, t in enumerate(ids) if t in eos), len(ids))
        details = answer["details"]
        assert [t["id"] for t in details["tokens"]] == ids[:n]
        assert [t["logprob"] for t in details["tokens"]] == pytest.approx(scores[:n].tolist(), abs=1e-4)
        assert all(len(step) <= 2 for step in details["top_tokens"])


def test_openai_logprobs_with_the_sdk(lm_server, gpt2_text):
    import openai

    model = gpt2_text[0]
    client = openai.OpenAI(base_url=lm_server.url + "/v1", api_key="none")
    prompt = "The weather today is"
    got = client.completions.create(model="m", prompt=prompt, max_tokens=10, temperature=0, logprobs=2)
    (ref,) = _reference(model, [prompt], max_new_tokens=10)
    lp = got.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx(ref[1][: len(lp.token_logprobs)], abs=1e-4)
    assert "".join(lp.tokens) == got.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:k]) for k in range(len(lp.tokens))]
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert [max(top.values()) for top in lp.top_logprobs] == pytest.approx(lp.token_logprobs, abs=1e-5)  # greedy
    # streamed: the chunks' log-probabilities join to the same list
    chunks = list(
        client.completions.create(model="m", prompt=prompt, max_tokens=10, temperature=0, logprobs=2, stream=True)
    )
    streamed = [v for c in chunks if c.choices[0].logprobs for v in c.choices[0].logprobs.token_logprobs]
    assert streamed == pytest.approx(lp.token_logprobs, abs=1e-6)
    assert "".join(c.choices[0].text for c in chunks) == got.choices[0].text
    # cut at a stop string: the tokens before the cut
    text = got.choices[0].text
    if len(text) > 6:
        cut = client.completions.create(
            model="m", prompt=prompt, max_tokens=10, temperature=0, logprobs=0, stop=[text[3:6]]
        ).choices[0]
        assert cut.text == text[: text.index(text[3:6])]
        assert "".join(cut.logprobs.tokens).startswith(cut.text) and len(cut.logprobs.tokens) < len(lp.tokens)
        assert cut.logprobs.top_logprobs == [{}] * len(cut.logprobs.tokens)
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.completions.create(model="m", prompt=prompt, max_tokens=4, logprobs=9)
    assert err.value.response.json()["error"] == "`logprobs` must be an integer from 0 to 5"


def test_details_after_a_prefix_list_the_generated_tokens(mt_server, marian_one):
    model, _ = marian_one
    params = {"max_new_tokens": 10, "min_new_tokens": 6, "num_beams": 1}
    prefix = model.translate(SOURCES[:1], max_new_tokens=2, min_new_tokens=2)[0]
    body = {"inputs": [SOURCES[0]], "parameters": {**params, "prefix": prefix, "details": True}}
    r = httpx.post(mt_server.url + "/", json=body)
    assert r.status_code == 200, r.text
    (answer,) = r.json()
    (prefix_ids,) = model.encode_prefixes([prefix], 1, model.settings())
    entries = []
    ((seq,),) = model.generate_rows(
        [model.tokenizer(SOURCES[0])["input_ids"]],
        prefixes=[prefix_ids],
        on_logprobs=lambda rows, lp, ids, top: entries.append(float(lp[0])),
        **params,
    )
    generated = seq[1 + len(prefix_ids) :].tolist()
    assert len(prefix_ids) > 0 and len(generated) == len(entries)
    tokens = answer["details"]["tokens"]
    assert [t["id"] for t in tokens] == generated
    assert [t["logprob"] for t in tokens] == pytest.approx(entries, abs=1e-5)
    assert answer["details"]["generated_tokens"] == len(generated)


def test_prefix_alternatives_and_confidence(mt_server, marian_one):
    from transformers import MarianMTModel

    model, path = marian_one
    short = {"max_new_tokens": 10}
    prefix = model.translate(SOURCES[:1], max_new_tokens=3, min_new_tokens=3)[0]
    assert prefix
    r = httpx.post(mt_server.url + "/", json={"inputs": SOURCES, "parameters": {**short, "prefix": [prefix, None]}})
    got = [a["translation_text"] for a in r.json()]
    assert got == model.translate(SOURCES, prefix=[prefix, None], **short)
    assert got[0] != model.translate(SOURCES[:1], **short)[0]  # the prefix changed the output

    r = httpx.post(
        mt_server.url + "/", json={"inputs": SOURCES[0], "parameters": {**short, "prefix": prefix, "alternatives": 3}}
    )
    (answer,) = r.json()
    expected = model.translate(SOURCES[:1], prefix=[prefix], alternatives=3, **short)[0]
    assert [(a["text"], pytest.approx(a["score"], abs=1e-5)) for a in answer["alternatives"]] == expected
    assert answer["translation_text"] == expected[0][0]

    # confidence: the mean log-probability of the output's tokens, as transformers scores them teacher-forced
    r = httpx.post(mt_server.url + "/", json={"inputs": SOURCES, "parameters": {**short, "return_confidence": True}})
    ref = MarianMTModel.from_pretrained(path).eval()
    for source, answer in zip(SOURCES, r.json()):
        enc = model.tokenizer([source], return_tensors="pt")
        out = model.generate(enc["input_ids"], **short)[0]
        out = out[
            : next((k + 1 for k, t in enumerate(out.tolist()[1:], 1) if t == model.tokenizer.eos_token_id), len(out))
        ]
        with torch.no_grad():
            logits = ref(**enc, decoder_input_ids=out[None, :-1]).logits[0]
        mean = logits.log_softmax(-1).gather(1, out[1:, None]).mean().item()
        assert answer["confidence"] == pytest.approx(mean, abs=1e-4)
        assert answer["translation_text"] == model.translate([source], **short)[0]

    def error(params):
        r = httpx.post(mt_server.url + "/", json={"inputs": "x", "parameters": params})
        return r.status_code, r.json()["error"]

    assert error({"prefix": ["a", "b"]}) == (
        422,
        "`prefix` must be a text, or a list with one text (or null) per input",
    )
    assert error({"alternatives": 99}) == (422, "`alternatives` must be an integer from 1 to 16")
    r = httpx.post(
        mt_server.url + "/generate_stream", json={"inputs": "x", "parameters": {"alternatives": 2, "num_beams": 1}}
    )
    assert r.status_code == 422 and r.json()["error"] == (
        "`alternatives`, `return_confidence`, `glossary` and `keep_spans` are not streamed"
    )
