"""Continuous batching over HTTP: requests sent while a long batch runs join it, are answered before it ends, and
get the answers they get alone (greedy, sampling with a seed, beam search, streamed), for an encoder-decoder and a
decoder-only model; with ``--no-continuous-batching`` they wait for the batch to end."""

import asyncio
import json

import httpx
import pytest

from tests.helpers import make_causal
from turboseq.serving.process import ServerProcess

SHORT = [
    ("/", {"inputs": "hello", "parameters": {"num_beams": 1, "max_new_tokens": 4, "min_new_tokens": 4}}),
    ("/", {"inputs": "Good morning", "parameters": {"num_beams": 4, "max_new_tokens": 5, "min_new_tokens": 5}}),
    (
        "/",
        {
            "inputs": "I would like a cup of coffee",
            "parameters": {"do_sample": True, "seed": 11, "top_k": 30, "max_new_tokens": 6, "min_new_tokens": 6},
        },
    ),
    ("/generate_stream", {"inputs": "The weather", "parameters": {"num_beams": 1, "max_new_tokens": 5}}),
]


def _long(tokens: int) -> dict:
    return {
        "inputs": ["The train to Berlin leaves at half past eight."] * 4,
        "parameters": {"num_beams": 4, "min_new_tokens": tokens, "max_new_tokens": tokens},
    }


async def _send(client: httpx.AsyncClient, url: str, route: str, body: dict):
    r = await client.post(url + route, json=body)
    assert r.status_code == 200, r.text
    if route == "/generate_stream":  # the tokens as streamed, then the final text
        events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
        return [e["token"]["id"] for e in events if "token" in e], events[-1]["generated_text"]
    return r.json()


def _scenario(url: str, long_body: dict, shorts) -> tuple[dict, list, bool]:
    """The long request, then (once it runs) the short ones together: the long answer, the short answers, and
    whether the long one was still running when the last short answer came."""

    async def go():
        async with httpx.AsyncClient(timeout=120) as client:
            long = asyncio.create_task(_send(client, url, "/", long_body))
            await asyncio.sleep(1.0)
            assert not long.done()
            answers = await asyncio.gather(*(_send(client, url, route, body) for route, body in shorts))
            running = not long.done()
            return await long, answers, running

    return asyncio.run(go())


def _counter(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def _alone(url: str, shorts) -> list:
    async def go():
        async with httpx.AsyncClient(timeout=120) as client:
            return [await _send(client, url, route, body) for route, body in shorts]

    return asyncio.run(go())


def test_requests_join_a_running_translation_batch(big_marian):
    srv = ServerProcess(big_marian)
    try:
        alone = _alone(srv.url, SHORT)
        joins = _counter(srv.url, "turboseq_batch_joins_total")
        long, answers, running = _scenario(srv.url, _long(400), SHORT)
        assert running  # every short request was answered while the long batch ran
        assert answers == alone
        assert _counter(srv.url, "turboseq_batch_joins_total") - joins == len(SHORT)
        assert _alone(srv.url, [("/", _long(400))]) == [long]  # and the long one is unchanged by them
        assert "turboseq_time_in_batch_seconds_count" in httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()


def test_without_continuous_batching_requests_wait_for_the_batch(big_marian):
    srv = ServerProcess(big_marian, "--no-continuous-batching")
    try:
        alone = _alone(srv.url, SHORT[:2])
        _, answers, running = _scenario(srv.url, _long(400), SHORT[:2])
        assert not running and answers == alone
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def long_lm(tmp_path_factory):
    """A GPT-2 with room for long generations (1100 positions) and a byte-level tokenizer."""
    path = tmp_path_factory.mktemp("long-gpt2")
    make_causal(path, "gpt2", vocab_size=512, tokenizer=True, n_embd=256, n_layer=4, n_positions=1100)
    return path


def test_requests_join_a_running_completion_batch(long_lm):
    srv = ServerProcess(long_lm)
    try:
        shorts = [*SHORT, ("/v1/completions", {"prompt": "Once upon", "max_tokens": 5, "seed": 3, "temperature": 0.7})]
        alone = _alone(srv.url, shorts)
        long, answers, running = _scenario(srv.url, _long(400), shorts)
        assert running and answers[:-1] == alone[:-1]
        assert answers[-1]["choices"] == alone[-1]["choices"]  # an OpenAI answer's id and time differ
        assert _alone(srv.url, [("/", _long(400))]) == [long]
    finally:
        srv.stop()


def test_admission_is_by_arrival(big_marian):
    """A request that does not fit the running batch (--max-batch-size) waits for room, and the requests that came
    after it wait behind it even where they would fit: a long stream of small requests never starves it."""
    srv = ServerProcess(big_marian, "--max-batch-size", "4")
    try:
        small = {"inputs": "hello", "parameters": {"num_beams": 1, "max_new_tokens": 4, "min_new_tokens": 4}}
        wide = {"inputs": ["Good morning."] * 4, "parameters": small["parameters"]}
        done: list[str] = []

        async def go():
            async with httpx.AsyncClient(timeout=120) as client:

                async def send(name, body):
                    await _send(client, srv.url, "/", body)
                    done.append(name)

                long_body = dict(_long(400), inputs=_long(400)["inputs"][:2])  # 2 of the 4 inputs
                tasks = [asyncio.create_task(send("long", long_body))]
                await asyncio.sleep(1.0)
                tasks.append(asyncio.create_task(send("wide", wide)))  # 2 + 4 inputs: waits for room
                await asyncio.sleep(0.2)
                tasks += [asyncio.create_task(send(f"small{i}", small)) for i in range(3)]  # would fit: 2 + 1
                await asyncio.gather(*tasks)

        asyncio.run(go())
        assert done[:2] == ["long", "wide"] and sorted(done[2:]) == ["small0", "small1", "small2"], done
    finally:
        srv.stop()
