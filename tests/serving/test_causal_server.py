"""Serving a decoder-only model: Hugging Face's text-generation format, /generate_stream and OpenAI's
/v1/completions, each answer equal to the library's, plus the request checks specific to prompts."""

import json

import httpx
import pytest

from turboseq.bench.models import bench_sentences
from turboseq.serving.process import ServerProcess

PROMPTS = bench_sentences()[:4]


@pytest.fixture(scope="module")
def lm_server(gpt2_text):
    _, _, _, path = gpt2_text
    srv = ServerProcess(path, "--max-batch-size", "4", "--max-new-tokens", "40", "--served-model-name", "gpt2-test")
    yield srv
    srv.stop()


def _events(text: str) -> list:
    return [json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]" for line in text.splitlines() if line]


def test_text_generation_format_equals_library(lm_server, gpt2_text):
    model = gpt2_text[0]
    info = httpx.get(lm_server.url + "/info").json()
    assert info["task"] == "text-generation" and "/v1/completions" in info["routes"]
    params = dict(max_new_tokens=12, num_beams=2)
    r = httpx.post(lm_server.url + "/", json={"inputs": PROMPTS, "parameters": params})
    assert r.status_code == 200, r.text
    assert r.json() == [{"generated_text": t} for t in model.generate_text(PROMPTS, **params)]
    r = httpx.post(lm_server.url + "/", json={"inputs": PROMPTS[0], "parameters": dict(params, return_full_text=True)})
    assert r.json() == [{"generated_text": model.generate_text(PROMPTS[:1], return_full_text=True, **params)[0]}]
    # no length given: TGI's default of 100 new tokens, cut to the server's --max-new-tokens (40) and to what
    # fits after the prompt in this model's 96 positions
    r = httpx.post(lm_server.url + "/", json={"inputs": "Hello"})
    assert r.status_code == 200 and r.json() == [
        {"generated_text": model.generate_text(["Hello"], max_new_tokens=40)[0]}
    ]
    long_prompt = "Hello " * 14
    room = 96 - len(model.tokenizer(long_prompt)["input_ids"])
    assert 0 < room < 40
    r = httpx.post(lm_server.url + "/", json={"inputs": long_prompt})
    assert r.status_code == 200, r.text
    assert r.json() == [{"generated_text": model.generate_text([long_prompt], max_new_tokens=room)[0]}]
    r = httpx.post(lm_server.url + "/", json={"inputs": "Hello " * 12, "parameters": {"max_new_tokens": 40}})
    assert r.status_code == 422
    assert r.json()["error"].endswith("plus 40 new tokens exceeds the model's 96 positions"), r.text


def test_generate_stream_equals_non_streamed(lm_server, gpt2_text):
    model = gpt2_text[0]
    body = {"inputs": PROMPTS[1], "parameters": {"max_new_tokens": 15}}
    r = httpx.post(lm_server.url + "/generate_stream", json=body)
    events = _events(r.text)
    expected = model.generate_text(PROMPTS[1:2], max_new_tokens=15)[0]
    assert "".join(e["token"]["text"] for e in events[:-1]) == expected
    assert events[-1]["generated_text"] == expected
    assert events[-1]["finish_reason"] in ("length", "eos_token")


def test_openai_completions(lm_server, gpt2_text):
    model = gpt2_text[0]
    r = httpx.post(lm_server.url + "/v1/completions", json={"prompt": PROMPTS[:2], "max_tokens": 10, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = model.generate_text(PROMPTS[:2], max_new_tokens=10)
    assert body["object"] == "text_completion"
    assert [c["text"] for c in body["choices"]] == expected and [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] <= 20 and body["usage"]["prompt_tokens"] > 0
    # sampling with a seed: n answers, equal to the library's with the same seed and OpenAI's top-k off
    r = httpx.post(
        lm_server.url + "/v1/completions",
        json={"prompt": PROMPTS[2], "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "n": 2, "seed": 3},
    )
    sampled = model.generate_text(
        PROMPTS[2:3],
        max_new_tokens=8,
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
        top_k=0,
        num_return_sequences=2,
        seed=3,
    )[0]
    assert [c["text"] for c in r.json()["choices"]] == sampled


def test_openai_stop_is_cut_and_streamed(lm_server, gpt2_text):
    model = gpt2_text[0]
    plain = model.generate_text(PROMPTS[3:4], max_new_tokens=20)[0]
    stop = plain[len(plain) // 2 : len(plain) // 2 + 3]
    body = {"prompt": PROMPTS[3], "max_tokens": 20, "temperature": 0, "stop": stop}
    r = httpx.post(lm_server.url + "/v1/completions", json=body)
    choice = r.json()["choices"][0]
    assert choice["text"] == plain[: plain.index(stop)] and choice["finish_reason"] == "stop"
    r = httpx.post(lm_server.url + "/v1/completions", json=dict(body, stream=True))
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == choice["text"]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "body, words",
    [
        ({"prompt": "a", "n": 2, "temperature": 0}, "`n` > 1 needs `temperature` > 0"),
        (
            {"prompt": "a", "logprobs": 2, "echo": True},
            "`logprobs` with `echo` (the prompt's log-probabilities) is not supported yet",
        ),
        ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "up to 4 non-empty strings"),
        (
            {"prompt": "a", "max_tokens": 41},
            "41 new tokens (max_new_tokens or max_length) is over the server's limit of 40",
        ),
        ({"prompt": ["a", "b"], "stream": True}, "streaming takes one prompt and n=1"),
        ({"prompt": "a", "max_tokens": 0}, "`max_new_tokens` must be >= 1"),
    ],
)
def test_openai_bad_requests(lm_server, body, words):
    r = httpx.post(lm_server.url + "/v1/completions", json=body)
    assert r.status_code == 422 and words in r.json()["error"], r.text


def test_the_openai_sdk_lists_the_model_and_completes_with_it(lm_server, gpt2_text):
    import openai

    model = gpt2_text[0]
    client = openai.OpenAI(base_url=lm_server.url + "/v1", api_key="unused", max_retries=0)
    listed = client.models.list().data
    name = httpx.get(lm_server.url + "/info").json()["model"]
    assert name == "gpt2-test"  # --served-model-name
    assert [m.id for m in listed] == [name] and listed[0].object == "model" and listed[0].owned_by == "turboseq"
    assert client.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-9")
    assert f"unknown model 'gpt-9'; this server serves {name!r}" in str(caught.value.body)
    done = client.completions.create(model=name, prompt=PROMPTS[0], max_tokens=6, temperature=0)
    assert done.choices[0].text == model.generate_text(PROMPTS[:1], max_new_tokens=6)[0]


def test_chat_needs_a_chat_template(lm_server):
    body = {"model": "x", "messages": [{"role": "user", "content": "Hello"}]}
    r = httpx.post(lm_server.url + "/v1/chat/completions", json=body)
    assert r.status_code == 422 and r.json()["error"].endswith(
        "has no chat template (tokenizer_config.json's chat_template): send a plain prompt instead"
    )
