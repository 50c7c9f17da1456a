"""Runtime layers against each other: the unpadded encoder against the padded one."""

import pytest
import torch

from tests.helpers import source_batch


def test_unpadded_encoder_equals_padded(marian_one):
    """A right-padded batch runs through the encoder without its padding: the real positions match the padded
    encoder's (up to float rounding: other row counts), the padded ones are zeros."""
    from turboseq.runtime.layers import encode, encode_unpadded

    model, _ = marian_one
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed=3)
    assert (mask == 0).any() and (mask.sum(dim=1) > 0).all()
    stack = model.spec.encoder
    got = encode_unpadded(stack, ids, mask)
    expected = encode(stack, ids, mask)
    real = mask.bool()[..., None]
    assert (got.masked_fill(real, 0) == 0).all()
    torch.testing.assert_close(got.masked_fill(~real, 0), expected.masked_fill(~real, 0), rtol=0, atol=2e-5)


@pytest.mark.parametrize("case", ["left padding", "no padding", "an empty row"])
def test_unpadded_encoder_leaves_other_batches_to_the_padded_one(marian_one, case):
    from turboseq.runtime.layers import encode, encode_unpadded

    model, _ = marian_one
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed=3)
    if case == "left padding":
        ids, mask = ids.flip(1), mask.flip(1)
    elif case == "no padding":
        mask = torch.ones_like(mask)
    else:
        mask[0] = 0
    assert torch.equal(encode_unpadded(model.spec.encoder, ids, mask), encode(model.spec.encoder, ids, mask))
