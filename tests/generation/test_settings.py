"""Generation settings: defaults applied once, every bad argument named in the error."""

import pytest
import torch


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_beams=0), "num_beams"),
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
        (dict(top_p=0.0, do_sample=True), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=0.0, do_sample=True), "temperature"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_length=-3), "max_length"),
        (dict(min_new_tokens=-2), "min_new_tokens"),
        (dict(min_length=-1), "min_length"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(early_stopping="sometimes"), "early_stopping"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
        (dict(num_beemz=2), "num_beemz"),
        (dict(max_length=10_000), "max_length"),
    ],
)
def test_invalid_arguments_name_the_argument(marian_one, kwargs, name):
    model, _ = marian_one
    ids = torch.tensor([[5, 6, 7, 0]])
    with pytest.raises(ValueError, match=name):
        model.generate(ids, **kwargs)
    with pytest.raises(ValueError, match=name):
        model.translate(["Hello."], **kwargs)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"eos_token_id": "x"}, "`eos_token_id` must be token ids"),
        ({"eos_token_id": [2, 500]}, "`eos_token_id` must be token ids in the vocabulary [0, 100)"),
        ({"pad_token_id": 100}, "`pad_token_id` must be a token id"),
        ({"forced_bos_token_id": True}, "`forced_bos_token_id`"),
        ({"bad_words_ids": [[3, -1]]}, "`bad_words_ids`"),
        ({"max_length": 1}, "no room for a new token"),
        ({"do_sample": "yes"}, "`do_sample` must be true or false"),
    ],
)
def test_resolve_rejects_bad_token_ids_flags_and_lengths(kwargs, words):
    from turboseq.generation.settings import resolve

    with pytest.raises(ValueError) as err:
        resolve({"eos_token_id": 2, "pad_token_id": 0}, kwargs, max_positions=64, vocab_size=100)
    assert words in str(err.value)


@pytest.mark.parametrize("seed", ["1", 1.5, -1, 2**63, True])
def test_check_seed(seed):
    from turboseq.generation.settings import check_seed

    with pytest.raises(ValueError, match="`seed` must be an integer"):
        check_seed(seed)
    check_seed(0)
    check_seed(None)
