"""Decoder-only language models (GPT-2, Llama, Qwen2, Mistral): ``generate`` in ``*ForCausalLM.generate``'s
format, ``generate_rows`` for unpadded prompts, and ``generate_text`` over text.

The same engine as the encoder-decoders (``models.engine``) without the encoder: prompts are left-padded per
batch (positions counted from each row's first real token, its padding masked), prefilled in one pass into the
preallocated cache (once per prompt, then copied to its beams or samples), then decoded one token per step by
the shared search loops, finished rows leaving the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from turboseq.errors import InputTooLong
from turboseq.generation.batching import pad_batch, pad_rows, row_hooks
from turboseq.generation.runner import Plan, plan_search
from turboseq.generation.settings import GenerationSettings, for_prompt, resolve
from turboseq.generation.stops import StopStrings
from turboseq.models.engine import EagerDecoder, Engine, generate_output, output_request
from turboseq.models.progress import progress_bar
from turboseq.runtime.cache import DecoderState
from turboseq.runtime.decoding import decode_step
from turboseq.runtime.spec import CausalLMSpec


def _left_padding(mask: Tensor) -> Tensor:
    """Per row, the number of leading zeros of ``mask`` [batch, len]; raises unless every row is zeros then
    ones (left padding, as decoder-only generation needs)."""
    padding = mask.shape[1] - mask.sum(dim=1)
    expected = (torch.arange(mask.shape[1])[None, :] >= padding[:, None]).long()
    if not torch.equal(mask.long(), expected):
        raise ValueError(
            "decoder-only models need left-padded prompts: `attention_mask` rows must be zeros then ones "
            "(tokenizer padding_side='left')"
        )
    empty = (padding == mask.shape[1]).nonzero()
    if empty.numel():
        raise ValueError(f"prompt {int(empty[0])} is empty (its attention_mask row is all zeros)")
    return padding


class CausalLM(Engine):
    """A decoder-only language model. Build it with ``turboseq.load``."""

    spec: CausalLMSpec

    def settings(self, **kwargs) -> GenerationSettings:
        """The effective generation settings for a call with ``kwargs`` (model defaults applied); each batch
        then counts its prompt into ``max_length`` (``generation.settings.for_prompt``)."""
        return resolve(
            self.generation_defaults,
            kwargs,
            max_positions=self.spec.max_positions,
            prompt_length=0,
            vocab_size=self.spec.vocab_size,
        )

    @torch.inference_mode()
    def forward_logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Float32 logits [batch, len, vocab] at every position of left-padded ``input_ids``, as transformers'
        ``model(input_ids, attention_mask).logits`` (padded positions excepted). The quality bench compares
        compute types with it."""
        ids = torch.as_tensor(input_ids, dtype=torch.long).to(self.device)
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).to(self.device)
        padding = _left_padding(mask)
        attn = self.spec.decoder.layers[0].self_attn
        state = DecoderState(
            None,
            None,
            1,
            attn.kv_heads,
            attn.head_dim,
            ids.shape[1],
            layers=len(self.spec.decoder.layers),
            rows=ids.shape[0],
            like=torch.empty(0, dtype=self.attention_dtype, device=self.device),
            padding=padding if bool(padding.any()) else None,
        )
        hidden = decode_step(self.spec, state, ids.masked_fill(mask == 0, 0), all_positions=True)
        return self.head.logits(hidden)

    # --- the engine's hooks: prompts are left-padded per batch -----------------------------------------------

    def _row_length(self, row) -> int:
        return len(row)

    def _collate(self, rows, mask, chunk: list[int]) -> tuple[Tensor, Tensor | None]:
        if not isinstance(rows, list):
            return rows[chunk], mask[chunk]
        # the pad token, or EOS where the model has none (as transformers pads)
        return pad_batch(rows, chunk, self.settings().pad_token_id, left=True)

    def plan_batch(self, inputs, mask, s, generator, hooks, trace, prompts, head) -> Plan:
        """The search of a batch of prompts; it gives per prompt its sequences, prompt included and its left
        padding removed."""
        spec = self.spec
        inputs = inputs.to(self.device)
        batch, width = inputs.shape
        s = for_prompt(s, width, spec.max_positions)
        padding = None if mask is None or bool(mask.all()) else (width - mask.sum(dim=1)).to(self.device)
        # the search loops see padding as id `vocab_size` (``EagerDecoder.step``)
        prompt = inputs if padding is None else inputs.masked_fill(~mask.to(self.device).bool(), spec.vocab_size)
        attn = spec.decoder.layers[0].self_attn

        def make_decoder(fanout, expand):
            fan_out = fanout.group * fanout.copies  # decoder rows per prompt
            state = DecoderState(
                None,
                None,
                fanout.group,
                attn.kv_heads,
                attn.head_dim,
                s.max_length,
                initial_capacity=width + 64,
                layers=len(spec.decoder.layers),
                rows=batch * fan_out,
                like=torch.empty(0, dtype=self.attention_dtype, device=self.device),
                padding=None if padding is None else padding.repeat_interleave(fan_out),
            )
            return EagerDecoder(spec, state, prompt_share=fan_out)  # a prompt runs once per input

        plan = plan_search(
            make_decoder, head, prompt, s, spec.vocab_size, generator, hooks=hooks, trace=trace, stop=self._stop(s)
        )
        cut = [0] * batch if padding is None else padding.tolist()
        plan.trim = lambda i, sequences: [seq[cut[i] :] for seq in sequences]
        return plan

    def _stop(self, s: GenerationSettings) -> StopStrings | None:
        """The stop strings of ``s`` over the model's tokenizer (None: none)."""
        if not s.stop_strings:
            return None
        tokenizer, vocab = self.tokenizer, self.spec.vocab_size

        def decode(ids: list[int]) -> str:  # the loops' padding id (``vocab_size``) is no token
            return tokenizer.decode([t for t in ids if t < vocab], skip_special_tokens=True)

        return StopStrings(s.stop_strings, decode)

    # --- token-level API ---------------------------------------------------------------------------------

    def _check_ids(self, ids: Tensor) -> None:
        if ((ids < 0) | (ids >= self.spec.decoder.embed.tokens.shape[0])).any():
            raise ValueError(f"`input_ids` has ids outside the vocabulary [0, {self.spec.vocab_size})")

    def _empty_prompt(self) -> list[int]:
        if self.spec.bos_token_id is None:
            raise ValueError("an empty prompt needs a start token, and the model has no `bos_token_id`")
        return [self.spec.bos_token_id]

    @torch.inference_mode()
    def generate(
        self,
        input_ids: Tensor | Sequence[Sequence[int]],
        attention_mask: Tensor | None = None,
        *,
        max_batch_size: int | None = 32,
        seed: int | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        """Generate like ``transformers`` ``*ForCausalLM.generate``: a LongTensor [batch * num_return_sequences,
        len] holding each prompt as given (left padding included) and its new tokens, padded after EOS and
        right-padded to the longest row. Lengths count the prompt: ``max_length`` includes it,
        ``max_new_tokens`` does not.

        Prompts run as given, in batches of at most ``max_batch_size`` in input order (a padded batch keeps its
        padding, so results equal transformers' on the same tensor). Without ``attention_mask``, pad tokens are
        masked where the pad token is not EOS, as transformers infers it. An input of width 0 starts from the
        BOS token. ``return_dict_in_generate``, ``output_scores`` and ``output_logits`` as
        ``Seq2SeqModel.generate``.
        """
        trace = output_request(kwargs)
        s = self.settings(**kwargs)
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        if ids.dim() != 2:
            raise ValueError(f"`input_ids` must be 2-D [batch, length], got shape {tuple(ids.shape)}")
        if ids.shape[0] == 0:
            return torch.empty((0, 0), dtype=torch.long)
        if ids.shape[1] == 0:
            ids = torch.tensor([self._empty_prompt()] * ids.shape[0], dtype=torch.long)
            attention_mask = None
        if attention_mask is None:
            pad = s.pad_token_id
            mask = ids.ne(pad).long() if (ids == pad).any() and pad not in s.eos_token_ids else torch.ones_like(ids)
        else:
            mask = torch.as_tensor(attention_mask).long()
            if mask.shape != ids.shape:
                raise ValueError(f"`attention_mask` shape {tuple(mask.shape)} != `input_ids` shape {tuple(ids.shape)}")
        padding = _left_padding(mask)
        self._check_ids(ids)
        outputs = self._run(ids, mask, s, max_batch_size, None, seed, trace=trace)
        rows = [
            torch.cat((ids[i, : int(padding[i])], seq.cpu()))
            for i, per_input in enumerate(outputs)
            for seq in per_input
        ]
        sequences = pad_rows(rows, s.output_fill_token_id)
        return sequences if trace is None else generate_output(sequences, trace, s, encoder_decoder=False)

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
        on_logprobs=None,
        top_logprobs: int = 0,
        settings: GenerationSettings | None = None,
        **kwargs,
    ) -> list[list[Tensor]]:
        """Like ``generate`` for unpadded prompts (token id lists), regrouped by length into left-padded
        batches: per prompt its ``num_return_sequences`` sequences (prompt included, up to and including EOS).
        An empty prompt starts from the BOS token. ``on_tokens``, ``abandoned`` and ``settings`` as
        ``Seq2SeqModel.generate_rows``."""
        tensors, s, hooks, _ = self._row_inputs(rows, settings, kwargs, abandoned, on_tokens, on_logprobs, top_logprobs)
        if not tensors:
            return []
        return self._run(tensors, None, s, max_batch_size, max_batch_tokens, seed, hooks=hooks)

    def _row_inputs(self, rows, settings, kwargs, abandoned, on_tokens, on_logprobs, top_logprobs, prefixes=None):
        """``generate_rows``' arguments checked: its prompts as tensors, settings and hooks (no decoder prompts:
        the prompts are the inputs)."""
        if prefixes is not None:
            raise TypeError("`prefixes` are for encoder-decoders; a decoder-only prompt already is the prefix")
        if settings is not None and kwargs:
            raise TypeError("pass generation arguments or `settings`, not both")
        s = settings if settings is not None else self.settings(**kwargs)
        hooks = row_hooks(s, abandoned, on_tokens, on_logprobs, top_logprobs)
        tensors = [torch.as_tensor(list(r) or self._empty_prompt(), dtype=torch.long) for r in rows]
        for t in tensors:
            self._check_ids(t)
        return tensors, s, hooks, None

    # --- text API ----------------------------------------------------------------------------------------

    def encode_prompts(self, texts: Sequence[str], limit: int, truncation: bool = False) -> list[list[int]]:
        """Token ids of each prompt (the tokenizer's special tokens included), at most ``limit`` each; a longer
        prompt raises ``InputTooLong``, or with ``truncation`` keeps its last tokens."""
        if isinstance(texts, str):
            raise TypeError("`texts` must be a list of strings, not a single string")
        rows = self.tokenizer(list(texts))["input_ids"] if len(texts) else []
        for i, ids in enumerate(rows):
            if len(ids) > limit:
                if not truncation:
                    raise InputTooLong(i, len(ids), limit, "pass truncation=True to keep its end")
                rows[i] = ids[len(ids) - limit :]
        return rows

    def encode_chat(self, messages: list[dict], limit: int | None = None) -> list[int]:
        """Token ids of a conversation (``[{"role", "content"}, ...]``) rendered by the tokenizer's chat template,
        ending with the assistant's turn to speak, as ``tokenizer.apply_chat_template(messages,
        add_generation_prompt=True)`` gives them. ValueError if the model has no chat template; InputTooLong past
        ``limit`` tokens."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"{self.path} has no chat template (tokenizer_config.json's chat_template): send a plain prompt instead"
            )
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        if limit is not None and len(ids) > limit:
            raise InputTooLong(0, len(ids), limit, "shorten the conversation")
        return list(ids)

    def generate_text(
        self,
        texts: Sequence[str],
        *,
        return_full_text: bool = False,
        truncation: bool = False,
        batch_size: int = 32,
        max_batch_tokens: int | None = None,
        progress: bool = False,
        seed: int | None = None,
        **kwargs,
    ) -> list:
        """Continue each prompt: tokenize, generate (any generation kwargs), decode the new tokens without
        special tokens (``return_full_text=True``: the prompt's text too). One string per prompt, or a list of
        ``num_return_sequences`` strings per prompt. An empty prompt starts from the BOS token. Prompts that do
        not leave room for the new tokens in the model's positions raise (``truncation=True`` keeps their
        end); ``progress=True`` shows a progress bar on stderr."""
        s = self.settings(**kwargs)
        room = s.max_new_tokens if s.max_new_tokens is not None else 1
        limit = self.spec.max_positions - room
        if limit < 1:
            raise ValueError(f"{room} new tokens leave no room for a prompt in the model's {self.spec.max_positions}")
        encoded = self.encode_prompts(texts, limit, truncation)
        rows = [torch.tensor(ids or self._empty_prompt(), dtype=torch.long) for ids in encoded]
        with progress_bar(progress, len(texts), "prompt", "generate") as bar:
            outputs = self._run(rows, None, s, batch_size, max_batch_tokens, seed, progress=bar) if rows else []
        result = []
        for row, seqs in zip(rows, outputs):
            start = 0 if return_full_text else len(row)
            result.append(self.tokenizer.batch_decode([seq[start:].tolist() for seq in seqs], skip_special_tokens=True))
        if s.num_return_sequences == 1:
            return [r[0] for r in result]
        return result
