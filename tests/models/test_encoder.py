"""Encoder models: real all-MiniLM-L6-v2 weights against transformers + sentence-transformers' pooling,
random-init RoBERTa / XLM-R against transformers' hidden states, packing, classification, export."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import make_encoder

TEXTS = [
    "A man is eating food.",
    "The committee will publish its final report next spring, after consulting with experts from several "
    "universities and a long public hearing in which anyone could speak.",
    "hi",
    "",
    "Could you tell me where the nearest pharmacy is?",
    "Zwei Männer spielen Schach im Park.",
]


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


@pytest.mark.parametrize("kind", ["roberta", "xlm-roberta"])
def test_random_roberta_hidden_states_match(kind, tmp_path):
    """RoBERTa numbers positions from pad + 1: a right-padded batch must give transformers' hidden states
    (max abs diff < 1e-4 on activations of size ~1)."""
    import turboseq

    ref = make_encoder(tmp_path, kind)
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
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    import turboseq

    ref = make_encoder(tmp_path, kind, classes=3, seed=1)
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
    from turboseq.errors import ModelLoadError
    from turboseq.export.encoder import export_encoder

    model, _, tok, path = minilm
    out = export_encoder(model, tmp_path / "minilm.pt2")
    loaded = turboseq.load(out)
    assert (F.cosine_similarity(loaded.embed(TEXTS, batch_size=4), model.embed(TEXTS)) >= 0.99999).all()
    program = torch.export.load(out).module()  # plain torch, no turboseq classes involved
    enc = tok(TEXTS[:5], padding=True, return_tensors="pt")
    assert (
        F.cosine_similarity(program(enc["input_ids"], enc["attention_mask"]), model.embed(TEXTS[:5])) >= 0.99999
    ).all()
    # tied/shared tensors are stored once: the file is about the size of the weights
    assert out.stat().st_size < 1.2 * (path / "model.safetensors").stat().st_size

    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(out.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="not a readable turboseq export"):
        turboseq.load(corrupt)
    other = tmp_path / "other.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.ones(1, 2),)), other)
    with pytest.raises(ModelLoadError, match="not one written by `turboseq export`"):
        turboseq.load(other)


def test_compiled_export(minilm, tmp_path):
    """``compile=True`` adds an AOTInductor build that gives the eager embeddings (texts of mixed lengths, batched
    by length and returned in input order) and loads only when trusted."""
    import turboseq
    from turboseq.errors import ModelLoadError
    from turboseq.export.encoder import export_encoder

    model = minilm[0]
    out = export_encoder(model, tmp_path / "minilm-compiled.pt2", compile=True)
    with pytest.raises(ModelLoadError, match="holds compiled native code"):
        turboseq.load(out)
    loaded = turboseq.load(out, trust_compiled_code=True)
    texts = [*TEXTS, " ".join(TEXTS)]  # one long text among short ones
    assert (F.cosine_similarity(loaded.embed(texts, batch_size=4), model.embed(texts)) >= 0.99999).all()


def test_classify_pairs_read_bert_segments(tmp_path):
    """Pairs joined by the tokenizer, with segment 1 for the second text: equal to transformers given the same
    ``token_type_ids``, and different from the pair read as one segment."""
    from transformers import AutoTokenizer, BertTokenizerFast

    import turboseq

    ref = make_encoder(tmp_path, "bert", classes=3, seed=4)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(5, 200))]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    model = turboseq.load(tmp_path)
    texts, pairs = ["w5 w6", "w100 w101 w102", "w9"], ["w7", "w9 w10", "w150 w151 w152 w153"]
    enc = tok(texts, pairs, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = ref(**enc).logits
    got = model.classify(texts, text_pairs=pairs)
    assert [g["label"] for g in got] == [f"class_{int(i)}" for i in logits.argmax(-1)]
    assert [g["score"] for g in got] == pytest.approx(logits.softmax(-1).max(-1).values.tolist(), abs=1e-5)
    rows = [ids[m.bool()].tolist() for ids, m in zip(enc["input_ids"], enc["attention_mask"])]
    segments = [t[m.bool()].tolist() for t, m in zip(enc["token_type_ids"], enc["attention_mask"])]
    assert torch.allclose(model.class_logits_ids(rows, segments=segments), logits, atol=1e-5)
    assert not torch.allclose(model.class_logits_ids(rows), logits, atol=1e-3)
    with pytest.raises(ValueError, match="3 texts but 2 text pairs"):
        model.classify(texts, text_pairs=pairs[:2])
