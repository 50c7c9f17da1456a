"""Many models in one server (``serving.hub``): the `openai` SDK and plain HTTP pick a model by name; models load
on their first request, a slow or broken one delays nobody else, a memory budget unloads the least recently used
idle model, an idle one is unloaded, and each unload gives its memory back."""

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import make_causal, make_marian_with_tokenizer
from turboseq.serving.process import ServerProcess


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, ct2_dir, minilm):
    root = tmp_path_factory.mktemp("hub")
    make_marian_with_tokenizer(root / "marian", "swish-untied-4h")
    make_causal(root / "gpt2", "gpt2", vocab_size=512, tokenizer=True)
    _add_chat_template(root / "gpt2")
    make_marian_with_tokenizer(root / "back", "gelu-tied-2h")  # German to English, by its tokenizer_config
    config = json.loads((root / "back" / "tokenizer_config.json").read_text())
    config.update(source_lang="de", target_lang="en")
    (root / "back" / "tokenizer_config.json").write_text(json.dumps(config))
    paths = {"marian": root / "marian", "gpt2": root / "gpt2", "minilm": minilm[3], "whisper": ct2_dir}
    return paths | {"back": root / "back"}


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is the station?"}]


def _add_chat_template(path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from turboseq.bench.speech import SENTENCES, synthesize

    (path,) = synthesize(SENTENCES[:1], tmp_path_factory.mktemp("hub-speech"))
    return path


@pytest.fixture(scope="module")
def hub(dirs, tmp_path_factory):
    """marian (the default), gpt2, minilm and whisper (int8), loaded at start; a slow model whose config.json is a pipe
    that the test writes when it wants the load to end; a broken one."""
    slow, broken = tmp_path_factory.mktemp("slow"), tmp_path_factory.mktemp("broken")
    for f in dirs["marian"].iterdir():
        if f.name != "config.json":
            (slow / f.name).symlink_to(f)
    os.mkfifo(slow / "config.json")
    (broken / "config.json").write_text('{"model_type": "marian", "d_model": ')
    models = [f"{name}={path}" for name, path in dirs.items() if name not in ("whisper", "back")]
    models += [f"whisper={dirs['whisper']}:int8", f"back={dirs['back']}", f"slow={slow}", f"broken={broken}"]
    args = [a for m in models[1:] for a in ("--model", m)]
    preload = [a for name in dirs for a in ("--preload", name)]  # all but slow and broken
    srv = ServerProcess(models[0], *args, *preload, "--load-wait-s", "1", "--max-batch-size", "4")
    srv.slow_config, srv.real_config = slow / "config.json", dirs["marian"] / "config.json"
    yield srv
    srv.stop()


def test_the_openai_sdk_picks_each_model_by_name(hub, dirs, clip):
    import openai
    import torch

    import turboseq

    client = openai.OpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)
    listed = {m.id: m for m in client.models.list().data}
    assert list(listed) == ["marian", "gpt2", "minilm", "whisper", "back", "slow", "broken"]
    assert [m.status for m in listed.values()] == ["ready"] * 5 + ["unloaded"] * 2 and listed["marian"].default

    embedded = client.embeddings.create(model="minilm", input=["A man is eating food.", "hi"])
    expected = turboseq.load(dirs["minilm"]).embed(["A man is eating food.", "hi"])
    assert torch.allclose(torch.tensor([d.embedding for d in embedded.data]), expected, atol=1e-5)

    gpt2 = turboseq.load(dirs["gpt2"])
    done = client.completions.create(model="gpt2", prompt="Hello there", max_tokens=6, temperature=0)
    assert done.choices[0].text == gpt2.generate_text(["Hello there"], max_new_tokens=6)[0]

    heard = client.audio.transcriptions.create(model="whisper", file=clip.open("rb"))
    whisper = turboseq.load(dirs["whisper"], compute_type="int8")
    assert heard.text == whisper.transcribe(clip).text.strip()

    with pytest.raises(openai.UnprocessableEntityError) as caught:  # tiny.en: English only
        client.audio.translations.create(model="whisper", file=clip.open("rb"))
    assert "English-only Whisper model" in str(caught.value.body)

    # no model named: the default; an unknown name where the default lacks the route: 404 naming the models
    marian = turboseq.load(dirs["marian"])
    r = httpx.post(hub.url + "/", json={"inputs": "Hello world"})
    assert r.json() == [{"translation_text": marian.translate(["Hello world"])[0]}]
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert "unknown model 'text-embedding-3-small'; this server serves 'marian', 'gpt2'" in str(caught.value.body)
    # /models/NAME and /models/NAME/<route>
    r = httpx.post(hub.url + "/models/gpt2", json={"inputs": "Hello there", "parameters": {"max_new_tokens": 6}})
    assert r.json() == [{"generated_text": gpt2.generate_text(["Hello there"], max_new_tokens=6)[0]}]
    r = httpx.post(hub.url + "/models/minilm/v1/embeddings", json={"input": "hi"})
    assert torch.allclose(torch.tensor(r.json()["data"][0]["embedding"]), expected[1], atol=1e-5)
    page = httpx.get(hub.url + "/models/gpt2", follow_redirects=True)  # a model's playground: its links relative
    assert str(page.url).endswith("/models/gpt2/") and "fetch('generate_stream'" in page.text
    r = httpx.post(hub.url + "/models/nope/v1/embeddings", json={"input": "hi"})
    assert r.status_code == 404 and r.json()["error"].startswith("unknown model 'nope'")

    metrics = httpx.get(hub.url + "/metrics").text
    assert 'turboseq_model_loads_total{model="gpt2",outcome="ok"} 1.0' in metrics
    assert 'turboseq_model_weight_bytes{model="minilm"} 9.0' in metrics
    assert 'turboseq_request_duration_seconds_count{model="gpt2"}' in metrics
    assert 'turboseq_model_loaded{model="slow",state="unloaded"} 0.0' in metrics


@pytest.mark.pace
def test_a_slow_and_a_broken_model_delay_nobody(hub):
    started = time.perf_counter()
    r = httpx.post(hub.url + "/models/slow", json={"inputs": "Hello"}, timeout=30)
    waited = time.perf_counter() - started
    assert r.status_code == 503 and r.headers.get("retry-after") == "5", (r.text, r.headers)
    assert r.json() == {"error": "model 'slow' is loading", "error_type": "loading"} and 0.9 < waited < 5
    # while its load is stuck reading config.json, the others answer, /health included
    assert httpx.get(hub.url + "/health").json()["models"]["slow"] == "loading"
    assert httpx.post(hub.url + "/models/minilm/v1/embeddings", json={"input": "hi"}, timeout=5).status_code == 200
    # loads run one at a time, but one that takes over 5 s holds up the next no longer
    assert httpx.post(hub.url + "/models/broken", json={"inputs": "Hello"}).json()["error_type"] == "loading"
    deadline = time.time() + 30
    while httpx.get(hub.url + "/health").json()["models"]["broken"] == "loading" and time.time() < deadline:
        time.sleep(0.2)
    broken = httpx.post(hub.url + "/models/broken", json={"inputs": "Hello"}, timeout=30)
    assert broken.status_code == 503 and broken.json()["error_type"] == "model_load_failed"
    assert broken.json()["error"].startswith("model 'broken' failed to load: ") and "\n" not in broken.json()["error"]
    assert httpx.get(hub.url + "/health").status_code == 200

    # the load ends: the pipe is answered with the real config, which takes its place for later reads
    pipe = os.open(hub.slow_config, os.O_WRONLY)
    shutil.copy(hub.real_config, hub.slow_config.with_name("real.json"))
    os.replace(hub.slow_config.with_name("real.json"), hub.slow_config)
    os.write(pipe, hub.real_config.read_bytes())
    os.close(pipe)
    r = httpx.post(hub.url + "/models/slow", json={"inputs": "Hello"}, timeout=30)
    assert r.status_code == 200 and r.json() == httpx.post(hub.url + "/", json={"inputs": "Hello"}).json()


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def test_a_memory_budget_unloads_the_least_recently_used(dirs, clip):
    """Three models (MiniLM 90 MB of weights, Whisper int8 82 MB, Whisper float32 151 MB), a budget for two: a
    round robin keeps answering the same, each load unloads the oldest, and memory does not grow."""
    import openai
    import torch

    import turboseq

    models = [f"a={dirs['minilm']}", f"b={dirs['whisper']}:int8", f"c={dirs['whisper']}"]
    with ServerProcess(models[0], "--model", models[1], "--model", models[2], "--memory-budget", "250M") as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        many = [f"line {i}" for i in range(2048)]  # OpenAI's limit per request, queued as engine batches
        vectors = torch.tensor([d.embedding for d in client.embeddings.create(model="a", input=many).data])
        assert torch.allclose(vectors, turboseq.load(dirs["minilm"]).embed(many), atol=1e-5)
        answers, peaks = {}, []
        for rounds in range(2):
            peak = 0
            for name in "abc":
                if name == "a":
                    got = client.embeddings.create(model=name, input=["hello"]).data[0].embedding
                else:
                    got = client.audio.transcriptions.create(model=name, file=clip.open("rb")).text
                assert answers.setdefault(name, got) == got
                states = httpx.get(srv.url + "/health").json()["models"]
                loaded = 1 if (rounds, name) == (0, "a") else 2
                assert list(states.values()).count("ready") == loaded and states[name] == "ready", states
                peak = max(peak, _rss(srv.pid))
            peaks.append(peak)
        held = sum(m["weight_bytes"] for m in httpx.get(srv.url + "/info").json()["models"] if "weight_bytes" in m)
        assert held <= 250 << 20
        # the process's own libraries and working memory come on top (up to ~650 MB on a Zen 3); a second round
        # reuses what the first one freed (a leak would add a model's weights per load)
        assert peaks[1] < (250 << 20) + (800 << 20) and peaks[1] < peaks[0] * 1.3, peaks
        assert 'turboseq_model_unloads_total{model="a",reason="budget"} 2.0' in httpx.get(srv.url + "/metrics").text


def test_an_idle_model_is_unloaded_and_its_memory_freed(dirs):
    # /health answers 200 once the preload is done: the model is loaded, and unloaded 6 s after
    with ServerProcess(f"w={dirs['whisper']}", "--idle-unload-s", "6", "--preload", "w") as srv:
        loaded = _rss(srv.pid)
        assert httpx.get(srv.url + "/health").json()["models"]["w"] == "ready"  # still loaded when measured
        from websockets.sync.client import connect

        # a live stream starts the model's live hub, whose loop holds the model until the app shuts down
        with connect(srv.url.replace("http", "ws") + "/v1/audio/live?model=w", open_timeout=30) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        unloaded = 'turboseq_model_unloads_total{model="w",reason="idle"} 1.0'  # counted once its memory is freed
        deadline = time.time() + 60
        while unloaded not in httpx.get(srv.url + "/metrics").text and time.time() < deadline:
            time.sleep(0.25)
        assert httpx.get(srv.url + "/health").json()["models"]["w"] == "unloaded"
        freed, deadline = loaded - _rss(srv.pid), time.time() + 15
        while freed <= 100e6 and time.time() < deadline:  # a busy machine's threads may end a little later
            time.sleep(0.5)
            freed = loaded - _rss(srv.pid)
        assert freed > 100e6, freed  # its 151 MB of float32 weights, most of them given back
        bad = {"file": ("x.wav", b"RIFF", "audio/wav")}
        r = httpx.post(srv.url + "/v1/audio/transcriptions", files=bad, timeout=120)  # waits for the load
        assert r.status_code == 400 and "audio" in r.json()["error"]  # loaded again; its own app reads the file
        assert httpx.get(srv.url + "/health").json()["models"]["w"] == "ready"


def test_the_openai_sdk_chats_with_a_chat_template(hub, dirs):
    import openai
    import torch
    from transformers import AutoTokenizer

    import turboseq

    client = openai.OpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)
    gpt2, tokenizer = turboseq.load(dirs["gpt2"]), AutoTokenizer.from_pretrained(dirs["gpt2"])
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    out = gpt2.generate(torch.tensor([ids]), max_new_tokens=8)[0, len(ids) :]
    expected = tokenizer.decode(out, skip_special_tokens=True)

    done = client.chat.completions.create(model="gpt2", messages=CHAT, max_tokens=8, temperature=0)
    assert done.choices[0].message.role == "assistant" and done.choices[0].message.content == expected
    assert done.usage.prompt_tokens == len(ids) and done.choices[0].finish_reason in ("length", "stop")
    stream = client.chat.completions.create(model="gpt2", messages=CHAT, max_tokens=8, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason is not None
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    scored = client.chat.completions.create(
        model="gpt2", messages=CHAT, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2
    )
    content = scored.choices[0].logprobs.content
    assert "".join(t.token for t in content) == expected and all(len(t.top_logprobs) == 2 for t in content)
    assert all(t.logprob == max(top.logprob for top in t.top_logprobs) for t in content)  # greedy: the best

    r = httpx.post(hub.url + "/v1/chat/completions", json={"model": "gpt2", "messages": [{"role": "robot"}]})
    assert r.status_code == 422 and "role" in r.json()["error"]
    r = httpx.post(hub.url + "/v1/chat/completions", json={"model": "gpt2", "messages": CHAT, "tools": [{}]})
    assert r.status_code == 422 and r.json()["error"] == "`tools` are not supported"


def test_libretranslate_requests_pick_the_model_of_their_pair(hub, dirs):
    from libretranslatepy import LibreTranslateAPI

    import turboseq

    client = LibreTranslateAPI(hub.url)
    assert client.languages() == [
        {"code": "en", "name": "English", "targets": ["de"]},
        {"code": "de", "name": "German", "targets": ["en"]},
    ]
    german = "Der Zug nach Berlin fährt heute um halb neun vom Hauptbahnhof ab."  # one sentence, as LibreTranslate cuts
    back, forth = turboseq.load(dirs["back"]), turboseq.load(dirs["marian"])
    assert client.translate(german, "de", "en") == back.translate([german])[0]
    assert client.translate(german, "auto", "en") == back.translate([german])[0]  # detected as German
    assert client.translate("Good morning.", "en", "de") == forth.translate(["Good morning."])[0]
    r = httpx.post(hub.url + "/translate", json={"q": german, "source": "de", "target": "fr"})
    assert r.status_code == 400 and "not de to fr" in r.json()["error"]  # no such model: the default says its pair
    # a file goes to its pair's model too; the hub itself serves the download
    page = f"<p>{german}</p>"
    form = {"file": ("seite.html", page.encode()), "source": (None, "de"), "target": (None, "en")}
    url = httpx.post(hub.url + "/translate_file", files=form).json()["translatedFileUrl"]
    assert url.startswith(hub.url + "/download_file/")
    assert httpx.get(url).text == back.translate([page], format="html")[0]


def test_model_entries_and_sizes(tmp_path):
    from turboseq.serving.hub import ModelEntry, models_in, parse_bytes

    types = ("float32", "int8", "auto")
    assert ModelEntry.parse("opus=/m/opus-mt-en-de:int8", types) == ModelEntry("opus", Path("/m/opus-mt-en-de"), "int8")
    assert ModelEntry.parse("x=/m/a:b", types) == ModelEntry("x", Path("/m/a:b"), None)  # not a compute type
    assert ModelEntry.parse("/m/opus:auto", types) == ModelEntry("opus", Path("/m/opus"), "auto")
    with pytest.raises(ValueError, match="model name 'a b': use letters"):
        ModelEntry.parse("a b=/m", types)
    assert [parse_bytes(t) for t in ("4G", "512M", "1.5GB", "800000000", "2KiB")] == [
        4 << 30,
        512 << 20,
        int(1.5 * (1 << 30)),
        800_000_000,
        2048,
    ]
    with pytest.raises(ValueError, match="'lots' is not a size"):
        parse_bytes("lots")
    for name in ("b-model", "a.model", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "b-model" / "config.json").write_text("{}")
    (tmp_path / "a.model" / "model.bin").write_bytes(b"")
    assert [(e.name, e.path.name) for e in models_in(tmp_path)] == [("a.model", "a.model"), ("b-model", "b-model")]
    with pytest.raises(ValueError, match="no model directory in it"):
        models_in(tmp_path / "notes")


def test_models_dir_from_the_command_line(dirs, tmp_path):
    """``--models-dir``: every model folder by its name, loaded on first request (the default load wait)."""
    import turboseq

    for name in ("marian", "gpt2"):
        (tmp_path / name).symlink_to(dirs[name], target_is_directory=True)
    with ServerProcess("unused", "--models-dir", str(tmp_path), "--default-model", "marian", model_flag=False) as srv:
        assert [m["id"] for m in httpx.get(srv.url + "/v1/models").json()["data"]] == ["gpt2", "marian"]
        r = httpx.post(srv.url + "/", json={"inputs": "Hello"}, timeout=60)
        assert r.json() == [{"translation_text": turboseq.load(dirs["marian"]).translate(["Hello"])[0]}]
        r = httpx.post(srv.url + "/models/gpt2", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}}, timeout=60)
        assert r.status_code == 200 and httpx.get(srv.url + "/health").json()["models"] == {
            "gpt2": "ready",
            "marian": "ready",
        }
