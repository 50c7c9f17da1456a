"""Text-to-text models (Marian, T5, BART, ...): ``generate`` in transformers' format, ``generate_rows`` for
unpadded token ids, and ``translate``/``generate_text`` over text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from turboseq.formats.documents import run_rounds, split_document, translate_documents
from turboseq.formats.tokenizer import encode_texts
from turboseq.generation.batching import pad_batch, pad_rows, row_hooks
from turboseq.generation.settings import GenerationSettings
from turboseq.models.alternatives import alternatives as alternatives_after
from turboseq.models.engine import DEFAULT_BATCH, EncoderDecoder, generate_output, output_request
from turboseq.models.glossary import Phrase, check_terms, place_phrases, required_phrases
from turboseq.models.progress import progress_bar


def _check_alternatives(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`alternatives` must be an integer >= 1, got {n!r}")


class Seq2SeqModel(EncoderDecoder):
    """A text-to-text encoder-decoder model. Build it with ``turboseq.load``."""

    # --- the engine's hooks: token ids in, the start token as prompt ----------------------------------------

    def _row_length(self, row) -> int:
        return len(row)

    def _collate(self, rows, mask, chunk: list[int]) -> tuple[Tensor, Tensor | None]:
        """Unpadded rows are right-padded to the longest of the chunk; a padded tensor keeps its own mask."""
        if not isinstance(rows, list):
            return rows[chunk], mask[chunk]
        return pad_batch(rows, chunk, self.spec.pad_token_id)

    def _prompt(self, batch: int, s: GenerationSettings) -> Tensor:
        start = s.decoder_start_token_id if s.decoder_start_token_id is not None else self.spec.decoder_start_token_id
        return torch.full((batch, 1), start, dtype=torch.long, device=self.device)

    # --- token-level API ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        input_ids: Tensor | Sequence[Sequence[int]],
        attention_mask: Tensor | None = None,
        *,
        max_batch_size: int | None = DEFAULT_BATCH,
        max_batch_tokens: int | None = None,
        seed: int | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        """Generate like ``transformers`` ``model.generate``: a LongTensor [batch * num_return_sequences, len]
        starting with the decoder start token, padded after EOS and right-padded to the longest row.

        Inputs are regrouped by length into batches of at most ``max_batch_size`` sentences (and
        ``max_batch_tokens`` padded source tokens); results come back in input order. With ``do_sample``
        the random stream is torch's global one (or ``seed``'s own generator), drawn as transformers does.

        ``return_dict_in_generate=True`` returns transformers' output object instead, with ``scores``
        (``output_scores=True``), ``logits`` (``output_logits=True``), and for beam search ``sequences_scores``
        and ``beam_indices``, equal to transformers'. All inputs then run as one batch in input order, and
        finished rows stay in it until the batch ends, as in transformers.

        ``decoder_input_ids`` [batch, len] forces the start of every output, as in transformers: generation
        continues after them (the decoder start token is put first where the rows do not begin with it), and
        ``max_length`` counts them.
        """
        trace = output_request(kwargs)
        decoder_input_ids = kwargs.pop("decoder_input_ids", None)
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
            raise ValueError(f"input has {ids.shape[1]} tokens; the model accepts at most {self.spec.max_positions}")
        if ((ids < 0) | (ids >= self.backend.source_vocab_size())).any():
            raise ValueError(f"`input_ids` has ids outside the vocabulary [0, {self.spec.vocab_size})")
        # right-padded rows are cut to their length, so batches can be regrouped without changing results
        lengths = mask.sum(dim=1)
        right_padded = bool((mask == (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()).all())
        rows = [ids[i, : int(lengths[i])] for i in range(ids.shape[0])] if right_padded else None
        prompts = None if decoder_input_ids is None else self._decoder_prompts(decoder_input_ids, ids.shape[0], s)
        outputs = self._run(
            rows if rows is not None else ids,
            mask,
            s,
            max_batch_size,
            max_batch_tokens,
            seed,
            trace=trace,
            prompts=prompts,
        )
        sequences = pad_rows([seq for per_input in outputs for seq in per_input], s.output_fill_token_id)
        return sequences if trace is None else generate_output(sequences, trace, s, encoder_decoder=True)

    def _start(self, s: GenerationSettings) -> int:
        return s.decoder_start_token_id if s.decoder_start_token_id is not None else self.spec.decoder_start_token_id

    def _decoder_prompts(self, decoder_input_ids, batch: int, s: GenerationSettings) -> list[Tensor]:
        """Per input its decoder prompt from ``decoder_input_ids`` [batch, len], the start token put first
        where no row begins with it (transformers' rule)."""
        prompts = torch.as_tensor(decoder_input_ids, dtype=torch.long)
        if prompts.dim() != 2 or prompts.shape[0] != batch:
            raise ValueError(f"`decoder_input_ids` must be [batch={batch}, length], got shape {tuple(prompts.shape)}")
        if ((prompts < 0) | (prompts >= self.spec.vocab_size)).any():
            raise ValueError(f"`decoder_input_ids` has ids outside the vocabulary [0, {self.spec.vocab_size})")
        start = self._start(s)
        if prompts.shape[1] == 0 or bool((prompts[:, 0] != start).all()):
            prompts = torch.cat((torch.full((batch, 1), start, dtype=torch.long), prompts), dim=1)
        return list(prompts)

    def _prefix_prompts(self, prefixes, n: int, s: GenerationSettings) -> list[Tensor] | None:
        """Per input its decoder prompt: the start token, then the input's forced prefix (token ids, or None)."""
        if prefixes is None:
            return None
        if len(prefixes) != n:
            raise ValueError(f"`prefix` needs one entry per input: got {len(prefixes)} for {n} inputs")
        start = [self._start(s)]
        out = []
        for p in prefixes:
            ids = list(p or [])
            if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.spec.vocab_size for t in ids):
                raise ValueError(f"a prefix has ids outside the vocabulary [0, {self.spec.vocab_size}): {ids!r}")
            out.append(torch.tensor(start + ids, dtype=torch.long))
        return out

    @torch.inference_mode()
    def generate_rows(
        self,
        rows: Sequence[Sequence[int]],
        *,
        max_batch_size: int | None = DEFAULT_BATCH,
        max_batch_tokens: int | None = None,
        seed: int | None = None,
        on_tokens=None,
        abandoned=None,
        on_logprobs=None,
        top_logprobs: int = 0,
        settings: GenerationSettings | None = None,
        prefixes=None,
        **kwargs,
    ) -> list[list[Tensor]]:
        """Like ``generate`` for unpadded token id lists, but returns per input its ``num_return_sequences``
        sequences (decoder prompt included, up to and including EOS) instead of one padded tensor.

        ``on_tokens(inputs, tokens)`` streams greedy/sampled tokens as they are chosen (``num_beams=1``, one
        return sequence): called after each step with the indices of the inputs still decoding (a tensor) and
        their new tokens.
        ``abandoned()`` may return a set of input indices nobody waits for any more: they leave the batch at the
        next step and their results are meaningless (a server drops requests whose client left).
        ``on_logprobs(inputs, logprobs, top_ids, top_logprobs)`` receives, before each step's tokens are
        emitted, the log-probability of each chosen token (the log-softmax of the fully processed scores, which
        ``compute_transition_scores(..., normalize_logits=True)`` gives) and the ``top_logprobs`` most likely
        tokens with theirs (None for 0); one return sequence. Beam search reports its best hypothesis when its
        input ends, one call per token: the scores after the logits rules at the beam the token extended (as
        ``compute_transition_scores(sequences, scores, beam_indices)`` reads them).
        ``settings``: generation settings already resolved by ``settings(**kwargs)`` (then no other kwargs).
        ``prefixes``: per input the token ids every output starts with (after the decoder start token), or
        None; sequences then hold the start token and the prefix."""
        tensors, s, hooks, prompts = self._row_inputs(
            rows, settings, kwargs, abandoned, on_tokens, on_logprobs, top_logprobs, prefixes
        )
        if not tensors:
            return []
        return self._run(tensors, None, s, max_batch_size, max_batch_tokens, seed, hooks=hooks, prompts=prompts)

    def _row_inputs(self, rows, settings, kwargs, abandoned, on_tokens, on_logprobs, top_logprobs, prefixes):
        """``generate_rows``' arguments checked: its rows as tensors, settings, hooks and decoder prompts."""
        if settings is not None and kwargs:
            raise TypeError("pass generation arguments or `settings`, not both")
        s = settings if settings is not None else self.settings(**kwargs)
        hooks = row_hooks(s, abandoned, on_tokens, on_logprobs, top_logprobs)
        tensors = [torch.as_tensor(list(r), dtype=torch.long) for r in rows]
        return tensors, s, hooks, self._prefix_prompts(prefixes, len(tensors), s) if tensors else None

    # --- text API ----------------------------------------------------------------------------------------

    def translate(
        self,
        texts: Sequence[str],
        *,
        format: str | None = None,
        source_language: str | None = None,
        glossary: dict[str, str] | None = None,
        keep_spans: bool = False,
        **kwargs,
    ) -> list:
        """Translate sentences; returns one string per input (a list of strings per input when
        ``num_return_sequences`` > 1). Empty or whitespace-only inputs give "" without running the model.
        Options as ``generate_text``.

        ``format="text"`` or ``"html"``: each input is a document (paragraphs, or an HTML page), cut into
        sentences (``formats.documents``; ``source_language`` picks the sentence rules), all sentences of all
        inputs translated in length-sorted batches, and put back with the document's whitespace and markup.
        A sentence over the model's input limit is cut at words and translated in parts.

        ``glossary``: ``{"source term": "target term"}``; a sentence holding a source term (a whole word or
        phrase, any case) gets every matching target term in its output, and ``keep_spans=True`` keeps its
        URLs, e-mail addresses, numbers and ``{variables}`` as they are (``formats.documents.protected_spans``).
        Both steer the search, never edit the output text: each phrase is put where the model translates its
        source words (read from the cross-attention), else written before the end (``models.glossary``)."""
        check_terms(glossary, keep_spans)
        if glossary or keep_spans:
            kwargs["_terms"] = (glossary or {}, keep_spans)
        if format is None:
            return self.generate_text(texts, _desc="translate", **kwargs)
        if isinstance(texts, str):
            raise TypeError("`texts` must be a list of strings, not a single string")
        if kwargs.get("num_return_sequences", 1) != 1 or kwargs.get("alternatives") is not None:
            raise ValueError("a document is translated once: `num_return_sequences` and `alternatives` do not apply")
        limit = self.spec.max_positions

        def fits(sentence: str) -> bool:
            return len(self.tokenizer(sentence)["input_ids"]) <= limit

        documents = [split_document(t, format, source_language, fits) for t in texts]
        rounds = translate_documents(documents)
        return run_rounds(rounds, lambda sentences: self.generate_text(sentences, _desc="translate", **kwargs))

    def generate_text(
        self,
        texts: Sequence[str],
        *,
        prefix: Sequence[str | None] | None = None,
        alternatives: int | None = None,
        min_alternative_expansion_prob: float = 0.0,
        truncation: bool = False,
        batch_size: int = DEFAULT_BATCH,
        max_batch_tokens: int | None = None,
        progress: bool = False,
        seed: int | None = None,
        _desc: str = "generate",
        _terms: tuple[dict, bool] | None = None,
        **kwargs,
    ) -> list:
        """Text-to-text generation: tokenize, ``generate`` (any generation kwargs), decode without special
        tokens. One string per input, or a list of ``num_return_sequences`` strings per input. Task prefixes
        such as T5's "summarize: " belong to the input text. Empty or whitespace-only inputs give "" without
        running the model; inputs longer than the model's positions raise (or are cut with
        ``truncation=True``); ``progress=True`` shows a progress bar on stderr.

        ``prefix``: per input a text every output starts with (CTranslate2's ``target_prefix``), or None;
        outputs include it. ``alternatives=N``: per input a list of up to N ``(text, score)`` pairs, the N most
        likely tokens after the prefix each completed by the search (CTranslate2's ``return_alternatives``;
        ``models.alternatives``); ``min_alternative_expansion_prob`` drops unlikely expansions."""
        if isinstance(texts, str):
            raise TypeError("`texts` must be a list of strings, not a single string")
        if _terms is not None:
            return self._with_terms(texts, _terms, prefix=prefix, alternatives=alternatives, _desc=_desc,
                                    min_alternative_expansion_prob=min_alternative_expansion_prob,
                                    truncation=truncation, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                    progress=progress, seed=seed, **kwargs)  # fmt: skip
        s = self.settings(**kwargs)
        if alternatives is not None:
            _check_alternatives(alternatives)
        if alternatives is not None and s.num_return_sequences != 1:
            raise ValueError("`alternatives` replaces `num_return_sequences`: leave it at 1")
        todo = [i for i, t in enumerate(texts) if t.strip()]
        encoded = encode_texts(self.tokenizer, [texts[i] for i in todo], self.spec.max_positions, truncation, todo)
        rows = [torch.tensor(ids, dtype=torch.long) for ids in encoded]
        prompts = self._prefix_prompts(self.encode_prefixes(prefix, len(texts), s), len(texts), s)
        if prompts is not None:
            prompts = [prompts[i] for i in todo]
        if alternatives is not None:
            return self._text_alternatives(texts, todo, rows, prompts, alternatives, min_alternative_expansion_prob, s)
        with progress_bar(progress, len(texts), "input", _desc) as bar:
            bar.update(len(texts) - len(todo))
            outputs = (
                self._run(rows, None, s, batch_size, max_batch_tokens, seed, progress=bar, prompts=prompts)
                if rows
                else []
            )
        empty = [""] * s.num_return_sequences
        result: list = [list(empty) for _ in texts]
        for i, seqs in zip(todo, outputs):
            result[i] = self.tokenizer.batch_decode([seq.tolist() for seq in seqs], skip_special_tokens=True)
        if s.num_return_sequences == 1:
            return [r[0] for r in result]
        return result

    def encode_prefixes(self, prefix, n: int, s: GenerationSettings) -> list[list[int] | None] | None:
        """Token ids of each target prefix text (no special tokens; the forced BOS first where the model has
        one, as BART's outputs begin with it)."""
        if prefix is None:
            return None
        if isinstance(prefix, str) or len(prefix) != n:
            raise ValueError("`prefix` needs a list with one text (or None) per input")
        ids: list[list[int] | None] = []
        for text in prefix:
            if text is None or not text.strip():
                ids.append(None)
                continue
            tokens = self.tokenizer(text_target=text, add_special_tokens=False)["input_ids"]
            ids.append(([s.forced_bos_token_id] if s.forced_bos_token_id is not None else []) + tokens)
        return ids

    def _text_alternatives(self, texts, todo, rows, prompts, n: int, min_prob: float, s) -> list:
        start = torch.tensor([self._start(s)], dtype=torch.long)
        result: list = [[] for _ in texts]
        for j, i in enumerate(todo):
            prompt = prompts[j] if prompts is not None else start
            found = alternatives_after(self, rows[j], prompt, n, s, min_prob)
            result[i] = [(self.tokenizer.decode(ids, skip_special_tokens=True), score) for ids, score in found]
        return result

    @torch.inference_mode()
    def alternatives(
        self,
        rows: Sequence[Sequence[int]],
        prefixes,
        n: int,
        *,
        min_expansion_prob: float = 0.0,
        settings: GenerationSettings | None = None,
        **kwargs,
    ) -> list[list[tuple[list[int], float]]]:
        """Token-level ``translate(..., prefix=..., alternatives=n)``: per input (token ids) and its prefix
        (token ids or None), up to ``n`` pairs (the output's token ids after the decoder start token, prefix
        included; its score), as CTranslate2's ``return_alternatives`` (``models.alternatives``). ``settings``
        as ``generate_rows``."""
        s = settings if settings is not None else self.settings(**kwargs)
        _check_alternatives(n)
        prompts = self._prefix_prompts(prefixes, len(rows), s)
        return [
            alternatives_after(self, torch.as_tensor(list(r), dtype=torch.long), prompt, n, s, min_expansion_prob)
            for r, prompt in zip(rows, prompts)
        ]

    @torch.inference_mode()
    def mean_logprobs(self, rows: Sequence[Sequence[int]], sequences: Sequence[Tensor]) -> list[float]:
        """Per source ``rows[i]`` (token ids) and its output ``sequences[i]`` (decoder start token first), the
        mean log-probability of the output's tokens, teacher-forced in float32 without logits rules: a
        translation's confidence, whatever search made it. One row at a time (the vocabulary-wide logits of a
        whole batch would be large)."""
        out = []
        for row, seq in zip(rows, sequences):
            seq = torch.as_tensor(seq, dtype=torch.long)
            if len(seq) < 2:
                out.append(0.0)
                continue
            logits = self.forward_logits(torch.tensor([list(row)]), None, seq[None, :-1])[0]
            logp = torch.log_softmax(logits.float(), dim=-1).gather(1, seq[1:, None].to(logits.device))
            out.append(float(logp.mean()))
        return out

    def _with_terms(self, texts: Sequence[str], terms: tuple[dict, bool], **kwargs) -> list:
        """``generate_text`` where inputs require target phrases (glossary terms, protected spans): those inputs
        are searched with their phrases put where the model translates their source words
        (``models.glossary.place_phrases``), the others as without terms."""
        glossary, keep_spans = terms
        if kwargs.get("alternatives") is not None or kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError("a glossary or `keep_spans` gives one output per input: no `alternatives` or "
                             "`num_return_sequences`")  # fmt: skip
        phrases = [self.required_phrases(t, glossary, keep_spans) if t.strip() else () for t in texts]
        prefix = kwargs.pop("prefix", None)
        kwargs.pop("alternatives", None)
        kwargs.pop("min_alternative_expansion_prob", None)
        results: list = [None] * len(texts)
        for termed in (False, True):
            members = [i for i, p in enumerate(phrases) if bool(p) == termed]
            if not members:
                continue
            part_prefix = None if prefix is None else [prefix[i] for i in members]
            part_texts = [texts[i] for i in members]
            if termed:
                part = self._placing(part_texts, [phrases[i] for i in members], part_prefix, **kwargs)
            else:
                part = self.generate_text(part_texts, prefix=part_prefix, **kwargs)
            for i, out in zip(members, part):
                results[i] = out
        return results

    def _placing(self, texts, phrases, prefix, *, truncation=False, batch_size=DEFAULT_BATCH, max_batch_tokens=None,
                 progress=False, seed=None, _desc="generate", **kwargs) -> list[str]:  # fmt: skip
        s = self.settings(**kwargs)
        encoded = encode_texts(self.tokenizer, texts, self.spec.max_positions, truncation, list(range(len(texts))))
        with progress_bar(progress, len(texts), "input", _desc) as bar:
            outputs = self.generate_rows_with_phrases(
                encoded, phrases, settings=s, seed=seed, prefixes=self.encode_prefixes(prefix, len(texts), s),
                max_batch_size=batch_size, max_batch_tokens=max_batch_tokens,
            )  # fmt: skip
            bar.update(len(texts))
        return self.tokenizer.batch_decode([seqs[0].tolist() for seqs in outputs], skip_special_tokens=True)

    @torch.inference_mode()
    def generate_rows_with_phrases(self, rows, phrases: Sequence[tuple[Phrase, ...]], *, settings: GenerationSettings,
                                   seed: int | None = None, prefixes=None, max_batch_size: int | None = DEFAULT_BATCH,
                                   max_batch_tokens: int | None = None, lock=None) -> list[list[Tensor]]:  # fmt: skip
        """``generate_rows`` (one sequence per row) where each row's outputs hold its ``phrases``
        (``required_phrases``), each put where the model translates its source words (``models.glossary``).
        ``lock``: held while the tokenizer decodes (a server shares the tokenizer between threads)."""
        tensors = [torch.as_tensor(list(r), dtype=torch.long) for r in rows]
        prompts = self._prefix_prompts(prefixes if prefixes is not None else [None] * len(rows), len(rows), settings)

        def search(part, part_prompts, rules):
            s = replace(settings, rules=[*settings.rules, *rules]) if rules else settings
            return self._run(part, None, s, max_batch_size, max_batch_tokens, seed, prompts=part_prompts)

        return place_phrases(self, tensors, list(phrases), search, settings, prompts, lock)

    def required_phrases(self, text: str, glossary: dict, keep_spans: bool) -> tuple[Phrase, ...]:
        """The target phrases ``text`` requires (``models.glossary.required_phrases``)."""
        return required_phrases(self.tokenizer, text, glossary, keep_spans)
