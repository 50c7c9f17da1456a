"""Continuous batching in the library (``generation.joining``): searches that join a running batch at a step
boundary give the tokens of the same request decoded alone, for every family, search and logits rule; each one
ends on its own step; a search that fails ends alone."""

import pytest
import torch

from tests.helpers import compute_types

# (generate_rows arguments, seed, the step it joins at): a long greedy batch first, then requests that join it while
# it runs, several in the same step; lengths are forced where the random weights would end at once
JOBS = [
    (dict(max_new_tokens=40, min_new_tokens=40), None, 0),
    (dict(max_new_tokens=6), None, 3),
    (dict(max_new_tokens=10, num_beams=4), None, 5),
    (dict(max_new_tokens=12, do_sample=True, top_k=20), 7, 5),
    (dict(max_new_tokens=9, num_beams=3, num_return_sequences=2), None, 9),
    (dict(max_new_tokens=8, repetition_penalty=1.3, no_repeat_ngram_size=2), None, 12),
    (dict(max_new_tokens=7, do_sample=True, num_return_sequences=3, temperature=0.8), 3, 12),
]


def _rows(vocab: int, sizes, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab - 4, (n,), generator=g).tolist() for n in sizes]


def _run_joined(model, jobs) -> tuple[dict, dict]:
    """Each job's sequences through one running batch, and the step each one ended at."""
    batch = model.joined_batch()
    results, ended, clock = {}, {}, [0]  # clock: steps run so far
    pending = list(enumerate(jobs))
    while pending or len(batch):
        while pending and pending[0][1][3] <= clock[0]:
            k, (rows, kwargs, seed, _) = pending.pop(0)
            searches = model.row_searches(rows, seed=seed, **kwargs)
            out, left = [None] * len(rows), [len(searches)]
            for chunk, build in searches:

                def done(result, error, chunk=chunk, k=k, out=out, left=left):
                    assert error is None, error
                    for i, seqs in zip(chunk, result):
                        out[i] = seqs
                    left[0] -= 1
                    if not left[0]:
                        results[k], ended[k] = out, clock[0]

                batch.join(build, done)
        batch.step()
        clock[0] += 1
    return results, ended


def _equal(a, b) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(torch.equal(p, q) for p, q in zip(x, y)) for x, y in zip(a, b)
    )


def _check(model, vocab: int, source_sizes):
    jobs = [
        (_rows(vocab, sizes, k), kwargs, seed, at)
        for k, ((kwargs, seed, at), sizes) in enumerate(zip(JOBS, source_sizes))
    ]
    joined, ended = _run_joined(model, jobs)
    for k, (rows, kwargs, seed, _) in enumerate(jobs):
        alone = model.generate_rows(rows, seed=seed, **kwargs)
        assert _equal(joined[k], alone), (k, kwargs)
    assert ended[1] < ended[0] and ended[2] < ended[0]  # short requests leave before the long batch ends
    return jobs, joined


SIZES = [(9, 3, 12), (5, 7), (11, 2), (6, 8), (4,), (10, 3), (7, 5)]


def test_joined_searches_equal_alone_encoder_decoder(seq2seq):
    """Marian (both configs), T5 (relative position bias), flan-T5, BART, mBART, Pegasus."""
    _, model, _, _ = seq2seq
    _check(model, model.backend.source_vocab_size(), SIZES)


def test_joined_searches_equal_alone_with_prefixes(marian):
    """Forced decoder prefixes of two lengths: one request becomes two searches, joined as one."""
    model, _, _ = marian
    rows = _rows(60, (8, 4, 6), 0)
    prefixes = [[5, 6], None, [7, 8]]
    batch = model.joined_batch()
    first = model.row_searches(_rows(60, (5,), 1), max_new_tokens=30, min_new_tokens=30)
    got = {}
    for _, build in first:
        batch.join(build, lambda result, error: got.setdefault("long", result))
    for _ in range(4):
        batch.step()
    searches = model.row_searches(rows, prefixes=prefixes, max_new_tokens=8, num_beams=2)
    assert len(searches) == 2
    out = [None] * 3
    for chunk, build in searches:
        batch.join(build, lambda result, error, chunk=chunk: [out.__setitem__(i, r) for i, r in zip(chunk, result)])
    while len(batch):
        batch.step()
    assert _equal(out, model.generate_rows(rows, prefixes=prefixes, max_new_tokens=8, num_beams=2))


def test_joined_searches_equal_alone_decoder_only(causal):
    """GPT-2, Llama (grouped-query attention, rope scaling), Qwen2: left-padded prompts of several lengths."""
    _, model, _, _ = causal
    _check(model, model.spec.vocab_size, SIZES)


@pytest.mark.parametrize("compute_type", compute_types("bfloat16", "int8"))
def test_joined_searches_equal_alone_in_reduced_compute_types(marian, compute_type):
    import turboseq

    _, _, path = marian
    model = turboseq.load(path, compute_type=compute_type)
    _check(model, model.backend.source_vocab_size(), SIZES)


def test_a_failing_search_ends_alone(marian):
    """A search that cannot be built, or fails in its loop, gets its error; the others run on."""
    model, _, _ = marian
    batch = model.joined_batch()
    rows = _rows(60, (6, 9), 2)
    errors, results = [], []
    ((chunk, build),) = model.row_searches(rows, max_new_tokens=12, min_new_tokens=12)
    assert chunk == [1, 0]  # longest first, as generate_rows batches them
    batch.join(build, lambda result, error: results.append(result[::-1]))

    def broken(head):
        raise ValueError("no such input")

    batch.join(broken, lambda result, error: errors.append(str(error)))
    assert errors == ["no such input"]

    def hooks_fail(inputs, tokens):
        raise RuntimeError("the stream broke")

    for _, build in model.row_searches(rows[:1], max_new_tokens=12, num_beams=1, on_tokens=hooks_fail):
        batch.join(build, lambda result, error: errors.append(str(error)))
    while len(batch):
        batch.step()
    assert errors == ["no such input", "the stream broke"]
    assert _equal(results[0], model.generate_rows(rows, max_new_tokens=12, min_new_tokens=12))


KINDS = [dict(num_beams=1), dict(num_beams=3), dict(do_sample=True, num_return_sequences=2)]


def _reported(model, vocab: int, kwargs: dict) -> int:
    """``on_input`` gives each input that ends before its search does, the step it ends, as the search's result
    will hold it (a decoder-only prompt's left padding cut, an input's sampled rows together); returns how many
    inputs ended early."""
    rows = _rows(vocab, (3, 9, 5, 7, 4, 8, 6, 2), 4)
    batch = model.joined_batch()
    early, final = {}, {}
    for chunk, build in model.row_searches(rows, seed=5, max_new_tokens=40, **kwargs):
        batch.join(
            build,
            lambda result, error, chunk=chunk: final.update(zip(chunk, result)),
            lambda j, sequences, chunk=chunk: early.setdefault(chunk[j], sequences),
        )
    while len(batch):
        batch.step()
    assert len(final) == len(rows)
    for i, sequences in early.items():
        assert len(sequences) == len(final[i]) and all(torch.equal(a, b) for a, b in zip(sequences, final[i]))
    return len(early)


def test_inputs_are_reported_as_they_end_encoder_decoder(seq2seq):
    model = seq2seq[1]
    early = [_reported(model, model.backend.source_vocab_size(), kwargs) for kwargs in KINDS]
    assert sum(early) > 0, early  # the random weights end some inputs early


def test_inputs_are_reported_as_they_end_decoder_only(causal):
    model = causal[1]
    early = [_reported(model, model.spec.vocab_size, kwargs) for kwargs in KINDS]
    assert sum(early) > 0, early
