"""The public model object: ``generate`` in transformers' format, ``translate``/``generate_text`` over text."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from turboseq import search
from turboseq.cache import DecoderState
from turboseq.generation import GenerationSettings, check_seed, resolve
from turboseq.layers import LMHead, build_cross_kv, decode_step, encode
from turboseq.spec import Seq2SeqSpec


class Seq2SeqModel:
    """An encoder-decoder model on turboseq's runtime. Build it with ``turboseq.load``."""

    def __init__(self, spec: Seq2SeqSpec, config: dict, generation_defaults: dict, path: Path, device, dtype):
        self.spec = spec
        self.config = config
        self.generation_defaults = generation_defaults
        self.path = path
        self.device = device
        self.dtype = dtype
        self._tokenizer = None
        self.head = LMHead(spec.lm_head)

    def __repr__(self) -> str:
        return f"turboseq.Seq2SeqModel({self.config.get('model_type')}, {str(self.path)!r}, dtype={self.dtype})"

    # --- tokenizer -------------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from turboseq.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.path)
        return self._tokenizer

    # --- token-level API --------------------------------------------------------------------------------

    def settings(self, **kwargs) -> GenerationSettings:
        """The effective generation settings for a call with ``kwargs`` (model defaults applied)."""
        return resolve(self.generation_defaults, kwargs, max_positions=self.spec.max_positions,
                       vocab_size=self.spec.vocab_size)

    @torch.inference_mode()
    def generate(
        self,
        input_ids: Tensor | Sequence[Sequence[int]],
        attention_mask: Tensor | None = None,
        *,
        max_batch_size: int | None = 32,
        max_batch_tokens: int | None = None,
        seed: int | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        """Generate like ``transformers`` ``model.generate``: a LongTensor [batch * num_return_sequences, len]
        starting with the decoder start token, padded after EOS and right-padded to the longest row.

        Inputs are regrouped by length into batches of at most ``max_batch_size`` sentences (and
        ``max_batch_tokens`` padded source tokens); results come back in input order. With ``do_sample``
        the random stream is torch's global one (or ``seed``'s own generator), drawn as transformers does.
        """
        s = self.settings(**kwargs)
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        if ids.dim() != 2:
            raise ValueError(f"`input_ids` must be 2-D [batch, length], got shape {tuple(ids.shape)}")
        if attention_mask is None:
            pad = self.spec.pad_token_id
            mask = ids.ne(pad) if (ids == pad).any() and pad not in s.eos_token_ids else torch.ones_like(ids)
        else:
            mask = torch.as_tensor(attention_mask).long()
            if mask.shape != ids.shape:
                raise ValueError(f"`attention_mask` shape {tuple(mask.shape)} != `input_ids` shape {tuple(ids.shape)}")
        if ids.shape[0] == 0:
            return torch.empty((0, 0), dtype=torch.long)
        if ids.shape[1] > self.spec.max_positions:
            raise ValueError(
                f"input has {ids.shape[1]} tokens; the model accepts at most {self.spec.max_positions}"
            )
        if ((ids < 0) | (ids >= self.spec.encoder.embed.tokens.shape[0])).any():
            raise ValueError(f"`input_ids` has ids outside the vocabulary [0, {self.spec.vocab_size})")
        # right-padded rows are cut to their length, so batches can be regrouped without changing results
        lengths = mask.sum(dim=1)
        right_padded = bool((mask == (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()).all())
        rows = [ids[i, : int(lengths[i])] for i in range(ids.shape[0])] if right_padded else None
        outputs = self._run(rows if rows is not None else ids, mask, s, max_batch_size, max_batch_tokens, seed)
        return pad_rows([seq for per_input in outputs for seq in per_input], self._fill_value(s))

    def _fill_value(self, s: GenerationSettings) -> int:
        if s.is_beam:  # transformers' beam search fills with pad, or EOS when pad is id 0
            return s.pad_token_id if s.pad_token_id else s.eos_token_ids[0]
        return s.pad_token_id

    def _run(
        self, rows, mask, s, max_batch_size, max_batch_tokens, seed, progress=None, on_tokens=None, abandoned=None
    ) -> list[list[Tensor]]:
        """Decode every input; ``rows`` is a list of unpadded id tensors, or a padded tensor kept as is."""
        n = len(rows)
        if s.do_sample:
            order = list(range(n))  # input order: the random stream is consumed as transformers does
        else:
            order = sorted(range(n), key=lambda i: -len(rows[i]) if isinstance(rows, list) else 0)
        check_seed(seed)
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        results: list = [None] * n
        for chunk in make_batches(order, [self._row_length(r) for r in rows], max_batch_size, max_batch_tokens):
            inputs, chunk_mask = self._collate(rows, mask, chunk)
            gone = streamed = None
            if on_tokens is not None:  # this chunk's rows -> input indices

                def streamed(batch_rows, tokens, index=torch.tensor(chunk)):
                    on_tokens(index[batch_rows.cpu()], tokens)

            if abandoned is not None:  # input indices -> this chunk's rows

                def gone(chunk=chunk):
                    lost = abandoned()
                    return torch.tensor([i in lost for i in chunk]) if lost else None

            for i, out in zip(chunk, self._decode_batch(inputs, chunk_mask, s, generator, streamed, gone)):
                results[i] = out
            if progress is not None:
                progress.update(len(chunk))
        return results

    # --- the pieces a subclass with other inputs replaces (``SpeechModel``) --------------------------------

    def _row_length(self, row) -> int:
        """Encoder positions of one input, for batching by token budget."""
        return len(row)

    def _collate(self, rows, mask, chunk: list[int]) -> tuple[Tensor, Tensor | None]:
        """The encoder inputs and mask of the inputs ``chunk``: unpadded rows are right-padded to the longest."""
        if not isinstance(rows, list):
            return rows[chunk], mask[chunk]
        width = max(len(rows[i]) for i in chunk)
        ids = torch.full((len(chunk), width), self.spec.pad_token_id, dtype=torch.long)
        chunk_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, i in enumerate(chunk):
            ids[j, : len(rows[i])] = rows[i]
            chunk_mask[j, : len(rows[i])] = 1
        return ids, chunk_mask

    def _encode(self, inputs: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Encoder hidden states [batch, src_len, d_model] and the cross-attention key mask (None: all keys)."""
        inputs, mask = inputs.to(self.device), mask.to(self.device)
        return encode(self.spec.encoder, inputs, mask), mask.bool()[:, None, None, :]

    def _prompt(self, batch: int, s: GenerationSettings) -> Tensor:
        """The decoder prompt [batch, prompt_len]: the start token."""
        start = s.decoder_start_token_id if s.decoder_start_token_id is not None else self.spec.decoder_start_token_id
        return torch.full((batch, 1), start, dtype=torch.long, device=self.device)

    def _decode_batch(
        self, inputs: Tensor, mask: Tensor | None, s: GenerationSettings, generator, on_tokens=None, abandoned=None
    ) -> list[list[Tensor]]:
        spec = self.spec
        hidden, cross_mask = self._encode(inputs, mask)
        cross_kv = build_cross_kv(spec, hidden)
        batch = hidden.shape[0]
        attn = spec.decoder.layers[0].self_attn
        head_dim = attn.qkv.weight.shape[0] // (3 * attn.num_heads)
        procs = search.build_processors(s, spec.vocab_size)
        prompt = self._prompt(batch, s)
        if s.is_beam:
            group = s.num_beams
        else:
            group = 1
            copies = s.num_return_sequences
            if copies > 1:  # sampled sequences: one decoder row (and one cross K/V entry) each
                expand = torch.arange(batch, device=self.device).repeat_interleave(copies)
                cross_kv = [(k.index_select(0, expand), v.index_select(0, expand)) for k, v in cross_kv]
                cross_mask = None if cross_mask is None else cross_mask.index_select(0, expand)
                prompt = prompt.index_select(0, expand)
        state = DecoderState(cross_kv, cross_mask, group, attn.num_heads, head_dim, s.max_length)

        def step(tokens: Tensor) -> Tensor:
            return decode_step(spec, state, tokens)

        if s.is_beam:
            return search.beam_search(step, state.select, self.head, prompt, s, procs, generator, abandoned)
        if abandoned is not None and s.num_return_sequences > 1:  # rows are input copies here
            copies, inner = s.num_return_sequences, abandoned

            def abandoned():
                lost = inner()
                return None if lost is None else lost.repeat_interleave(copies)

        seqs = search.greedy_or_sample(step, state.select, self.head, prompt, s, procs, generator, on_tokens, abandoned)
        copies = s.num_return_sequences
        return [seqs[i * copies : (i + 1) * copies] for i in range(batch)]

    @torch.inference_mode()
    def generate_rows(
        self,
        rows: Sequence[Sequence[int]],
        *,
        max_batch_size: int | None = 32,
        max_batch_tokens: int | None = None,
        seed: int | None = None,
        on_tokens=None,
        abandoned=None,
        **kwargs,
    ) -> list[list[Tensor]]:
        """Like ``generate`` for unpadded token id lists, but returns per input its ``num_return_sequences``
        sequences (decoder prompt included, up to and including EOS) instead of one padded tensor.

        ``on_tokens(inputs, tokens)`` streams greedy/sampled tokens as they are chosen (``num_beams=1``, one
        return sequence): called after each step with the indices of the inputs still decoding (a tensor) and
        their new tokens.
        ``abandoned()`` may return a set of input indices nobody waits for any more: they leave the batch at the
        next step and their results are meaningless (a server drops requests whose client left)."""
        s = self.settings(**kwargs)
        if on_tokens is not None and (s.is_beam or s.num_return_sequences != 1):
            raise ValueError("streaming needs num_beams=1 and num_return_sequences=1")
        tensors = [torch.as_tensor(list(r), dtype=torch.long) for r in rows]
        if not tensors:
            return []
        return self._run(tensors, None, s, max_batch_size, max_batch_tokens, seed, on_tokens=on_tokens,
                         abandoned=abandoned)

    # --- text API ----------------------------------------------------------------------------------------

    def translate(self, texts: Sequence[str], **kwargs) -> list:
        """Translate sentences; returns one string per input (a list of strings per input when
        ``num_return_sequences`` > 1). Empty or whitespace-only inputs give "" without running the model.
        Options as ``generate_text``."""
        return self.generate_text(texts, _desc="translate", **kwargs)

    def generate_text(
        self,
        texts: Sequence[str],
        *,
        truncation: bool = False,
        batch_size: int = 32,
        max_batch_tokens: int | None = None,
        progress: bool = False,
        seed: int | None = None,
        _desc: str = "generate",
        **kwargs,
    ) -> list:
        """Text-to-text generation: tokenize, ``generate`` (any generation kwargs), decode without special
        tokens. One string per input, or a list of ``num_return_sequences`` strings per input. Task prefixes
        such as T5's "summarize: " belong to the input text. Empty or whitespace-only inputs give "" without
        running the model; inputs longer than the model's positions raise (or are cut with
        ``truncation=True``); ``progress=True`` shows a progress bar on stderr."""
        if isinstance(texts, str):
            raise TypeError("`texts` must be a list of strings, not a single string")
        s = self.settings(**kwargs)
        tok = self.tokenizer
        todo = [i for i, t in enumerate(texts) if t.strip()]
        limit = self.spec.max_positions
        encoded = tok([texts[i] for i in todo], truncation=truncation, max_length=limit if truncation else None)
        rows = []
        for i, input_ids in zip(todo, encoded["input_ids"]):
            if len(input_ids) > limit:
                raise ValueError(
                    f"input {i} has {len(input_ids)} tokens; the model accepts at most {limit} "
                    f"(pass truncation=True to cut it)"
                )
            rows.append(torch.tensor(input_ids, dtype=torch.long))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), unit="input", desc=_desc)
            bar.update(len(texts) - len(todo))
        outputs = self._run(rows, None, s, batch_size, max_batch_tokens, seed, progress=bar) if rows else []
        if bar is not None:
            bar.close()
        empty = [""] * s.num_return_sequences
        result: list = [list(empty) for _ in texts]
        for i, seqs in zip(todo, outputs):
            result[i] = tok.batch_decode([seq.tolist() for seq in seqs], skip_special_tokens=True)
        if s.num_return_sequences == 1:
            return [r[0] for r in result]
        return result


def make_batches(order: list[int], lengths: list[int], max_size: int | None, max_tokens: int | None):
    """Split ``order`` into consecutive batches of at most ``max_size`` rows and ``max_tokens`` padded tokens."""
    if max_size is not None and max_size < 1:
        raise ValueError(f"`max_batch_size` must be >= 1, got {max_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"`max_batch_tokens` must be >= 1, got {max_tokens}")
    batch: list[int] = []
    width = 0
    for i in order:
        new_width = max(width, lengths[i])
        too_many = max_size is not None and len(batch) + 1 > max_size
        too_big = max_tokens is not None and new_width * (len(batch) + 1) > max_tokens
        if batch and (too_many or too_big):
            yield batch
            batch, new_width = [], lengths[i]
        batch.append(i)
        width = new_width
    if batch:
        yield batch


def pad_rows(rows: list[Tensor], fill: int) -> torch.LongTensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r.cpu()
    return out
