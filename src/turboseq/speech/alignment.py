"""Word timestamps: the cross-attention of Whisper's alignment heads over the encoder frames, aligned to the
text tokens by dynamic time warping (openai/whisper's method, with CTranslate2's and faster-whisper's
arithmetic so that word times match faster-whisper's).

1. Teacher-force ``start sequence, <|notimestamps|>, text tokens, <|endoftext|>`` through the decoder, keeping
   the pre-softmax cross-attention scores of the alignment heads and each text token's probability (softmax
   over the text vocabulary).
2. Per head: softmax over the window's frames, standardise over the tokens, median filter (width 7) over
   the frames; average the heads.
3. DTW over the negated matrix; a word starts at the frame where the path first reaches its first token.
4. Punctuation joins its neighbouring word; long words at sentence and pause boundaries are clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from turboseq.runtime.cache import DecoderState
from turboseq.runtime.decoding import decode_step
from turboseq.runtime.layers import build_cross_kv
from turboseq.speech.transcript import WindowSegment, Word

TOKENS_PER_SECOND = 50  # encoder positions per second
MEDIAN_FILTER_WIDTH = 7
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
_SENTENCE_END = ".。!！?？"


def attention_alignment(model, hidden, sot_sequence: list[int], texts: list[list[int]], num_frames: list[int],
                        cross_kv=None):  # fmt: skip
    """Per window (``hidden`` [windows, positions, d_model], ``texts`` its text tokens, ``num_frames`` its mel
    frames): (text index, frame) pairs of the DTW path and the text tokens' probabilities. ``cross_kv``: the
    windows' cross-attention K/V where decoding built them already."""
    heads = model.whisper.get("alignment_heads")
    if not heads:
        raise ValueError("this model has no `alignment_heads` (generation_config.json); word timestamps need them")
    text = model.whisper_text
    rows = [sot_sequence + [text.no_timestamps] + list(t) + [text.eot] for t in texts]
    width = max(len(r) for r in rows)
    tokens = torch.tensor([r + [text.eot] * (width - len(r)) for r in rows], dtype=torch.long, device=hidden.device)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    attn = model.spec.decoder.layers[0].self_attn
    if cross_kv is None:
        cross_kv = build_cross_kv(model.spec, hidden)
    state = DecoderState(cross_kv, None, 1, attn.kv_heads, attn.head_dim, width)
    state.capture = by_layer
    out = decode_step(model.spec, state, tokens, all_positions=True)  # [windows, width, d_model]
    scores = torch.cat(state.captured, dim=1)  # [windows, alignment heads, width, positions]
    logits = model.head.logits(out).float()[..., : text.eot]  # the text vocabulary
    log_probs = logits.log_softmax(dim=-1)
    start = len(sot_sequence)
    probs, matrices = [], []
    for b, (row, frames) in enumerate(zip(rows, num_frames)):
        n = len(texts[b])
        targets = tokens[b, start + 1 : start + 1 + n]
        probs.append(log_probs[b, start : start + n].gather(1, targets[:, None])[:, 0].exp().cpu().numpy())
        positions = frames // 2  # the encoder's second convolution has stride 2
        if positions == 0 or n == 0:
            matrices.append(None)
            continue
        w = scores[b, :, : len(row), :positions].softmax(dim=-1)
        std, mean = torch.std_mean(w, dim=-2, keepdim=True, unbiased=False)
        w = (w - mean) / std
        # the filter runs along the frames, row by row: only the rows DTW reads
        w = _median_filter(w[:, start : start + n + 1], MEDIAN_FILTER_WIDTH).mean(dim=0)
        matrices.append(w.cpu().numpy())
    paths = iter(_negative_dtw([m for m in matrices if m is not None]))
    empty = (np.zeros(0, int), np.zeros(0, int))
    return [(*(empty if m is None else next(paths)), p) for m, p in zip(matrices, probs)]


# Devillard's median-of-7 exchange network: 13 compare-exchanges leave the median in the middle slot
_MEDIAN_OF_7 = ((0, 5), (0, 3), (1, 6), (2, 4), (0, 1), (3, 5), (2, 6), (2, 3), (3, 6), (4, 5), (1, 4), (1, 3), (3, 4))


def _median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """Median over a sliding window of ``width`` along the last axis, edges reflected (as numpy's 'reflect')."""
    rank = width // 2
    if x.shape[-1] <= rank:
        return x
    lead, length = x.shape[:-1], x.shape[-1]
    padded = F.pad(x.reshape(-1, 1, length), (rank, rank), mode="reflect")[:, 0]
    if width != 7:
        return padded.unfold(-1, width, 1).median(dim=-1).values.reshape(*lead, -1)
    slots = [padded[:, k : k + length] for k in range(7)]
    for a, b in _MEDIAN_OF_7:
        slots[a], slots[b] = torch.minimum(slots[a], slots[b]), torch.maximum(slots[a], slots[b])
    return slots[3].reshape(*lead, length)


def _negative_dtw(matrices: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per matrix x [tokens, frames], the monotonic path through it with the highest total (cost -x): all
    matrices at once, one anti-diagonal per step, in float32 and with CTranslate2's tie order (diagonal, then
    down, then right)."""
    if not matrices:
        return []
    count = len(matrices)
    n = max(x.shape[0] for x in matrices)
    m = max(x.shape[1] for x in matrices)
    xs = np.zeros((count, n, m), np.float32)
    for k, x in enumerate(matrices):  # cells past a matrix's own end never feed its path
        xs[k, : x.shape[0], : x.shape[1]] = x
    diagonals = np.arange(2, n + m + 1)
    rows = np.arange(1, n + 1)
    cols = diagonals[:, None] - rows[None, :]  # the column of row i on each anti-diagonal
    inside = (cols >= 1) & (cols <= m)
    cell = np.where(inside[None], -xs[:, rows[None, :] - 1, np.clip(cols - 1, 0, m - 1)], np.inf).astype(np.float32)
    inf = np.float32(np.inf)
    before = np.full((count, n + 1), inf, np.float32)  # the anti-diagonal two back, indexed by row
    before[:, 0] = 0
    last = np.full((count, n + 1), inf, np.float32)  # the previous one
    trace = np.empty((len(diagonals), count, n), np.int8)
    for d in range(len(diagonals)):
        c0, c1, c2 = before[:, :n], last[:, :n], last[:, 1:]
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2)).astype(np.int8)
        new = np.empty((count, n + 1), np.float32)
        new[:, 0] = inf
        new[:, 1:] = cell[:, d] + np.where(t == 0, c0, np.where(t == 1, c1, c2))
        trace[d] = t
        before, last = last, new
    paths = []
    for k, x in enumerate(matrices):
        i, j = x.shape
        path = []
        while i > 0 or j > 0:
            path.append((i - 1, j - 1))
            t = 2 if i == 0 else 1 if j == 0 else trace[i + j - 2, k, i - 1]
            if t == 0:
                i, j = i - 1, j - 1
            elif t == 1:
                i -= 1
            else:
                j -= 1
        path.reverse()
        pairs = np.array(path, dtype=np.int64).reshape(-1, 2)
        paths.append((pairs[:, 0], pairs[:, 1]))
    return paths


@dataclass
class WordTiming:
    """A word of one window's text: its tokens, start and end (seconds into the window) and mean token
    probability."""

    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


def word_timings(text, alignment, tokens: list[int], language: str | None) -> list[WordTiming]:
    """Words of ``tokens`` (one window's text tokens) with start and end (seconds into the window) and mean
    token probability, from ``attention_alignment``'s result."""
    text_idx, time_idx, probs = alignment
    words, word_tokens = text.split_to_word_tokens(list(tokens) + [text.eot], language)
    if len(word_tokens) <= 1 or len(text_idx) == 0:
        return []
    bounds = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_idx), (1, 0), constant_values=1).astype(bool)
    jump_times = time_idx[jumps] / TOKENS_PER_SECOND
    starts, ends = jump_times[bounds[:-1]], jump_times[bounds[1:]]
    return [
        WordTiming(w, t, float(s), float(e), float(np.mean(probs[i:j])))
        for w, t, s, e, i, j in zip(words, word_tokens, starts, ends, bounds[:-1], bounds[1:])
    ]


def merge_punctuations(timings: list[WordTiming], prepended: str, appended: str) -> None:
    """Opening punctuation joins the following word, closing punctuation the previous one (in place)."""
    i, j = len(timings) - 2, len(timings) - 1
    while i >= 0:
        before, after = timings[i], timings[j]
        if before.word.startswith(" ") and before.word.strip() in prepended:
            after.word = before.word + after.word
            after.tokens = before.tokens + after.tokens
            before.word, before.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(timings):
        before, after = timings[i], timings[j]
        if not before.word.endswith(" ") and after.word in appended:
            before.word = before.word + after.word
            before.tokens = before.tokens + after.tokens
            after.word, after.tokens = "", []
        else:
            i = j
        j += 1


def clip_long_words(timings: list[WordTiming], prepended: str, appended: str) -> tuple[float, float]:
    """Words at sentence ends may not last over twice the median word (capped at 0.7 s); then punctuation
    is merged. Returns (median duration, max duration)."""
    durations = np.array([t.end - t.start for t in timings])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):
        for i in range(1, len(timings)):
            if timings[i].end - timings[i].start > longest:
                if timings[i].word in _SENTENCE_END:
                    timings[i].end = timings[i].start + longest
                elif timings[i - 1].word in _SENTENCE_END:
                    timings[i].start = timings[i].end - longest
    merge_punctuations(timings, prepended, appended)
    return median, longest


def attach_words(segments: list[WindowSegment], timings: list[WordTiming], offset: float, median: float, longest: float,
                 last_speech: float, eot: int) -> float:  # fmt: skip
    """Give each segment of one window its words, times shifted by ``offset``;
    the first word after a pause and the segment edges are corrected as faster-whisper does. Returns the end
    of the last speech."""
    index = 0
    for seg in segments:
        saved, words = 0, []
        count = sum(1 for t in seg.tokens if t < eot)
        while index < len(timings) and saved < count:
            timing = timings[index]
            if timing.word:
                words.append(
                    Word(
                        round(offset + timing.start, 2),
                        round(offset + timing.end, 2),
                        timing.word,
                        timing.probability,
                    )  # fmt: skip
                )
            saved += len(timing.tokens)
            index += 1
        if words:
            first = words[0]
            if first.end - last_speech > median * 4 and (
                first.end - first.start > longest or (len(words) > 1 and words[1].end - first.start > longest * 2)
            ):
                if len(words) > 1 and words[1].end - words[1].start > longest:
                    boundary = max(words[1].end / 2, words[1].end - longest)
                    first.end = words[1].start = boundary
                first.start = max(0, first.end - longest)
            if seg.start < first.end and seg.start - 0.5 > first.start:
                first.start = max(0, min(first.end - median, seg.start))
            else:
                seg.start = first.start
            last = words[-1]
            if seg.end > last.start and seg.end + 0.5 < last.end:
                last.end = max(last.start + median, seg.end)
            else:
                seg.end = last.end
            last_speech = seg.end
        seg.words = words
    return last_speech
