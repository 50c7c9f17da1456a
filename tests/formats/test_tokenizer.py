"""The lean Marian tokenizer (``MarianText``): the ids and texts of transformers' MarianTokenizer without importing
transformers, and transformers' tokenizer wherever a directory is not one it reproduces."""

import json
import random
import subprocess
import sys

import pytest

from tests.helpers import make_marian_with_tokenizer
from turboseq.formats.tokenizer import MarianText, load_tokenizer


@pytest.fixture(scope="module")
def marian_tokenizers(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("marian-lean")
    make_marian_with_tokenizer(path, "swish-untied-4h")
    # a language code in the vocabulary, as multilingual opus-mt models have (>>de<< picks the target)
    vocab = json.loads((path / "vocab.json").read_text())
    vocab[">>de<<"] = max(vocab.values()) + 1
    (path / "vocab.json").write_text(json.dumps(vocab))
    lean = load_tokenizer(path)
    assert isinstance(lean, MarianText)
    return AutoTokenizer.from_pretrained(path), lean, path


def _texts(reference, n: int = 1500) -> list[str]:
    rng = random.Random(0)
    pieces = [p.replace("\u2581", "") for p in reference.get_vocab() if not p.startswith("<")]
    alphabet = list("abcdefghijXYZ .,;:!?'\"-()0123456789\t\n  éüß漢字🙂€") + ["</s>", "<unk>", "<pad>", ">>de<<", "  "]
    texts = ["", " ", "  a  ", "a </s> b", ">>de<< Hallo Welt", ">>fr<< unknown code", "x<pad>y", "</s></s>", ">>"]
    for k in range(n):
        if k % 2:
            texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))))
        else:
            texts.append(" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
    return texts


def test_lean_marian_encoding_equals_transformers(marian_tokenizers):
    reference, lean, _path = marian_tokenizers
    texts = _texts(reference)
    assert lean(texts)["input_ids"] == reference(texts)["input_ids"]
    assert (
        lean(texts, truncation=True, max_length=6)["input_ids"]
        == reference(texts, truncation=True, max_length=6)["input_ids"]
    )
    for text in texts[:300]:
        assert lean(text)["input_ids"] == reference(text)["input_ids"]
        assert (
            lean(text_target=text, add_special_tokens=False)["input_ids"]
            == reference(text_target=text, add_special_tokens=False)["input_ids"]
        )


def test_lean_marian_decoding_equals_transformers(marian_tokenizers):
    reference, lean, _path = marian_tokenizers
    rng = random.Random(1)
    rows = [[rng.randrange(len(reference)) for _ in range(rng.randint(0, 25))] for _ in range(1500)]
    for skip in (True, False):
        assert lean.batch_decode(rows, skip_special_tokens=skip) == reference.batch_decode(
            rows, skip_special_tokens=skip
        )
    assert lean.convert_ids_to_tokens(rows[0]) == reference.convert_ids_to_tokens(rows[0])
    assert (lean.eos_token_id, lean.pad_token_id, lean.unk_token_id) == (
        reference.eos_token_id,
        reference.pad_token_id,
        reference.unk_token_id,
    )
    assert sorted(lean.all_special_ids) == sorted(reference.all_special_ids)
    # anything else is transformers' own tokenizer, loaded on first use
    assert lean.get_vocab() == reference.get_vocab() and len(lean) == len(reference)
    texts = ["A short one.", "A longer sentence, padded to the same length."]
    padded, expected = (
        lean(texts, return_tensors="pt", padding=True),
        reference(texts, return_tensors="pt", padding=True),
    )
    assert padded["input_ids"].tolist() == expected["input_ids"].tolist()
    assert padded["attention_mask"].tolist() == expected["attention_mask"].tolist()


def test_a_marian_translation_imports_no_transformers(marian_tokenizers):
    _reference, _lean, path = marian_tokenizers
    script = (
        "import sys, turboseq\n"
        f"model = turboseq.load({str(path)!r})\n"
        "model.translate(['A cat sat on the mat.'], max_new_tokens=4)\n"
        "print('transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_directories_the_lean_tokenizer_does_not_reproduce_get_transformers(marian_tokenizers, tmp_path):
    import shutil

    _reference, _lean, path = marian_tokenizers
    for change in ({"separate_vocabs": True}, {"truncation_side": "left"}, {"tokenizer_class": "Other"}):
        other = tmp_path / "-".join(change)
        shutil.copytree(path, other)
        config = json.loads((other / "tokenizer_config.json").read_text())
        (other / "tokenizer_config.json").write_text(json.dumps({**config, **change}))
        assert MarianText.open(other) is None
