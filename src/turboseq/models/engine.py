"""The generation engine: ``Engine`` sorts inputs by length into batches and runs each through the search
loops; ``EncoderDecoder`` is its encoder-decoder form, shared by the text (``models.text``) and speech
(``models.speech``) front ends; the decoder-only form is ``models.causal.CausalLM``.

Per encoder-decoder batch the encoder runs once, the cross-attention keys/values are built once per input
(shared by its beams), and the search loop drives the decoder step against a preallocated cache. A front end
says what its inputs are through three hooks: ``_row_length``, ``_collate`` and ``_prompt``; the model's
``backend`` (``EagerBackend``, or an export's programs) runs the encoder and the decoder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from turboseq.formats.tokenizer import load_tokenizer
from turboseq.generation.batching import RowHooks, make_batches
from turboseq.generation.joining import JoinedBatch
from turboseq.generation.outputs import Trace, transition_scores
from turboseq.generation.runner import Plan, plan_search
from turboseq.generation.settings import GenerationSettings, check_seed, for_prompt, resolve
from turboseq.runtime.cache import DecoderState
from turboseq.runtime.compute import resolve_compute_type
from turboseq.runtime.decoding import decode_step, decode_together
from turboseq.runtime.head import LMHead
from turboseq.runtime.layers import build_cross_kv, encode, encode_unpadded

# encoder-decoder inputs per batch: batching amortizes reading the weights, and 64 rows beat 32 in every compute
# type (opus-mt shape, 64 inputs, greedy, Intel Xeon with AMX: bfloat16 +24%, float32 +5%, int8 +1%; beam 4:
# bfloat16 +6%, int8 +4%)
DEFAULT_BATCH = 64
_OUTPUT_FLAGS = ("return_dict_in_generate", "output_scores", "output_logits")


def output_request(kwargs: dict) -> Trace | None:
    """Take ``generate``'s output flags out of ``kwargs``: a ``Trace`` to fill where the call asks for
    transformers' output object (``return_dict_in_generate=True``), else None."""
    flags = {name: kwargs.pop(name, None) for name in _OUTPUT_FLAGS}
    for name, value in flags.items():
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"`{name}` must be true or false, got {value!r}")
    if not flags["return_dict_in_generate"]:
        return None
    return Trace(want_scores=bool(flags["output_scores"]), want_logits=bool(flags["output_logits"]))


def generate_output(sequences: Tensor, trace: Trace, s: GenerationSettings, encoder_decoder: bool):
    """transformers' ``generate`` output object (``Generate[Beam]{EncoderDecoder,DecoderOnly}Output``) for
    ``sequences`` and what ``trace`` recorded; attentions, hidden states and the cache are not kept (None)."""
    from transformers.generation import utils

    scores = tuple(trace.scores) if trace.want_scores else None
    logits = tuple(trace.logits) if trace.want_logits else None
    kind = "EncoderDecoder" if encoder_decoder else "DecoderOnly"
    if s.is_beam:
        return getattr(utils, f"GenerateBeam{kind}Output")(
            sequences=sequences,
            sequences_scores=trace.sequences_scores if trace.want_scores else None,
            scores=scores,
            logits=logits,
            beam_indices=trace.beam_indices,
        )
    return getattr(utils, f"Generate{kind}Output")(sequences=sequences, scores=scores, logits=logits)


class Engine:
    """What every generation model shares: its spec, defaults, LM head, and the batching loop ``_run``; a
    subclass decodes one batch (``decode_batch``) and says how its inputs are measured and collated."""

    def __init__(self, spec, config: dict, generation_defaults: dict, path: Path, device, compute_type: str):
        self.spec = spec
        self.config = config
        self.generation_defaults = generation_defaults
        self.path = path
        self.device = device
        self.compute_type = compute_type  # runtime.compute: float32, bfloat16, int8, int8_bfloat16
        # the KV cache's dtype
        self.attention_dtype = resolve_compute_type(compute_type, device).attention
        self._tokenizer = None
        self.head = LMHead(spec.lm_head)

    @property
    def dtype(self) -> str:
        """The older name of ``compute_type``."""
        return self.compute_type

    def __repr__(self) -> str:
        return (
            f"turboseq.{type(self).__name__}({self.config.get('model_type')}, {str(self.path)!r}, "
            f"compute_type={self.compute_type})"
        )

    @property
    def tokenizer(self):
        """The model directory's tokenizer, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path)
        return self._tokenizer

    @staticmethod
    def compute_transition_scores(
        sequences: Tensor, scores, beam_indices: Tensor | None = None, normalize_logits: bool = False
    ) -> Tensor:
        """transformers' ``compute_transition_scores``: the score of each generated token [rows, steps] from
        ``generate(..., return_dict_in_generate=True, output_scores=True)``'s sequences, scores and (beam search)
        beam indices."""
        return transition_scores(sequences, scores, beam_indices, normalize_logits)

    def settings(self, **kwargs) -> GenerationSettings:
        """The effective generation settings for a call with ``kwargs`` (model defaults applied)."""
        return resolve(
            self.generation_defaults, kwargs, max_positions=self.spec.max_positions, vocab_size=self.spec.vocab_size
        )

    @torch.inference_mode()  # the text API (generate_text, translate, transcribe) runs here too, not only generate
    def _run(
        self,
        rows,
        mask,
        s: GenerationSettings,
        max_batch_size,
        max_batch_tokens,
        seed,
        progress=None,
        hooks: RowHooks | None = None,
        trace: Trace | None = None,
        prompts: list[Tensor] | None = None,
    ) -> list[list[Tensor]]:
        """Decode every input of ``rows`` (a list, or a padded tensor kept as is); per input its sequences.
        ``hooks`` number the inputs as ``rows`` does. A ``trace`` (``generation.outputs``) takes all inputs as
        one batch, in input order, as transformers' ``generate`` does. ``prompts``: per input its decoder
        prompt (encoder-decoders: start token and forced prefix), batched with prompts of its length."""
        n = len(rows)
        if trace is not None:
            max_batch_size = max_batch_tokens = None
        check_seed(seed)
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        results: list = [None] * n
        groups = _groups(rows, prompts, s.do_sample or trace is not None)
        lengths = [self._row_length(r) for r in rows]
        for chunk in (c for group in groups for c in make_batches(group, lengths, max_batch_size, max_batch_tokens)):
            inputs, chunk_mask = self._collate(rows, mask, chunk)
            chunk_hooks = None if hooks is None else hooks.select(chunk)
            chunk_prompts = None if prompts is None else torch.stack([prompts[i] for i in chunk])
            outs = self.decode_batch(inputs, chunk_mask, s, generator, chunk_hooks, trace, chunk_prompts)
            for i, out in zip(chunk, outs):
                results[i] = out
            if progress is not None:
                progress.update(len(chunk))
        return results

    def _row_length(self, row) -> int:
        raise NotImplementedError

    def _collate(self, rows, mask, chunk: list[int]) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def decode_batch(
        self,
        inputs: Tensor,
        mask: Tensor | None,
        s: GenerationSettings,
        generator,
        hooks: RowHooks | None = None,
        trace: Trace | None = None,
        prompts: Tensor | None = None,
    ) -> list[list[Tensor]]:
        """One batch of inputs through the search: per input its sequences."""
        return self.plan_batch(inputs, mask, s, generator, hooks, trace, prompts, self.head).run()

    def plan_batch(self, inputs: Tensor, mask: Tensor | None, s: GenerationSettings, generator,
                   hooks: RowHooks | None, trace: Trace | None, prompts: Tensor | None, head) -> Plan:  # fmt: skip
        """``decode_batch``'s search, ready to run (``generation.runner.Plan``), its LM head ``head``."""
        raise NotImplementedError

    # --- continuous batching (``generation.joining``) -------------------------------------------------------

    @property
    def joins(self) -> bool:
        """Whether searches of this model can join a running batch (the eager runtime's decoder can)."""
        return True

    def joined_batch(self) -> JoinedBatch:
        """An empty running batch that searches (``searches``) join and leave."""
        return JoinedBatch(self.head, self._step_together)

    def _step_together(self, decoders: list, tokens: list[Tensor]) -> Tensor:
        tokens = [d.first_tokens(t) for d, t in zip(decoders, tokens)]
        return decode_together(self.spec, [d.state for d in decoders], tokens)

    def row_searches(self, rows, *, seed: int | None = None, on_tokens=None, abandoned=None, on_logprobs=None,
                     top_logprobs: int = 0, settings: GenerationSettings | None = None, prefixes=None,
                     **kwargs) -> list | None:  # fmt: skip
        """``generate_rows`` (same arguments, batch limits apart: one batch) as searches that may join a running
        batch (``searches``); None where they cannot (``joins``, or ``searches``' None)."""
        if not self.joins:
            return None
        tensors, s, hooks, prompts = self._row_inputs(
            rows, settings, kwargs, abandoned, on_tokens, on_logprobs, top_logprobs, prefixes
        )
        return self.searches(tensors, s, seed, hooks, prompts) if tensors else []

    def _row_inputs(self, rows, settings, kwargs, abandoned, on_tokens, on_logprobs, top_logprobs, prefixes):
        raise NotImplementedError

    def searches(self, rows: list[Tensor], s: GenerationSettings, seed: int | None = None,
                 hooks: RowHooks | None = None, prompts: list[Tensor] | None = None) -> list | None:  # fmt: skip
        """``_run``'s batches of ``rows`` as searches that may join a running batch: a list of ``(inputs, build)``,
        ``build(head)`` making the search (``Plan``) of the inputs ``inputs`` of ``rows``. Their results are
        those of ``_run``. None where the searches must run one after the other (sampling with prompts of
        several lengths, which draws from one random stream in turn)."""
        check_seed(seed)
        groups = _groups(rows, prompts, s.do_sample)
        if len(groups) > 1 and s.do_sample:
            return None
        generator = None if seed is None else torch.Generator().manual_seed(seed)

        def builder(chunk: list[int]):
            def build(head) -> Plan:
                inputs, mask = self._collate(rows, None, chunk)
                chunk_hooks = None if hooks is None else hooks.select(chunk)
                chunk_prompts = None if prompts is None else torch.stack([prompts[i] for i in chunk])
                return self.plan_batch(inputs, mask, s, generator, chunk_hooks, None, chunk_prompts, head)

            return build

        return [(chunk, builder(chunk)) for chunk in groups]


def _groups(rows, prompts: list[Tensor] | None, in_order: bool) -> list[list[int]]:
    """The inputs of ``rows`` in the order they are batched: longest first, or in input order (``in_order``: the
    random stream is consumed as transformers does); split by decoder prompt length where ``prompts`` differ (one
    batch holds prompts of one length)."""
    n = len(rows)
    order = (
        list(range(n)) if in_order else sorted(range(n), key=lambda i: -len(rows[i]) if isinstance(rows, list) else 0)
    )
    if prompts is None:
        return [order]
    widths = sorted({len(prompts[i]) for i in order})
    return [[i for i in order if len(prompts[i]) == w] for w in widths]


class EncoderDecoder(Engine):
    """An encoder-decoder model on turboseq's runtime; the front ends subclass it. Build one with
    ``turboseq.load``. Its ``backend`` runs the encoder and the decoder (``EagerBackend`` here; an export
    file's programs in ``export.loader``); the model holds it, the search loops drive it."""

    def __init__(self, spec, config: dict, generation_defaults: dict, path: Path, device, compute_type: str,
                 backend=None, audio: bool = False):  # fmt: skip
        super().__init__(spec, config, generation_defaults, path, device, compute_type)
        self.backend = backend if backend is not None else EagerBackend(spec, device, audio)

    def __repr__(self) -> str:
        label = self.backend.label
        if label is None:
            return super().__repr__()
        return f"turboseq.{type(self).__name__}({self.config.get('model_type')}, {label})"

    def settings(self, **kwargs) -> GenerationSettings:
        s = super().settings(**kwargs)
        if s.stop_strings is not None:
            raise ValueError("`stop_strings` is supported for decoder-only models; use `eos_token_id` here")
        return s

    # --- what the backend runs, for the search and for callers that decode windows more than once ----------

    def encode(self, inputs: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Encoder hidden states [batch, src_len, d_model] and the cross-attention key mask (None: all keys)."""
        return self.backend.encode(inputs, mask)

    def cross_kv(self, hidden: Tensor) -> list[tuple[Tensor, Tensor]] | None:
        """Every decoder layer's cross-attention K/V for encoder output ``hidden``, for callers that decode
        the same windows more than once (None where the backend builds its own: an export's programs)."""
        return self.backend.cross_kv(hidden)

    def decoder_state(self, hidden: Tensor, cross_mask: Tensor | None, group: int, max_length: int, expand=None,
                      cross_kv=None, padding: Tensor | None = None):  # fmt: skip
        """The decoder's state for encoder output ``hidden``, with ``group`` rows per input (``expand``: the
        input of each entry, where one input has several entries): an object with ``step(tokens) -> hidden``
        and ``select(rows, sentences)``. ``cross_kv``: ``hidden``'s K/V from ``cross_kv``, where the caller
        has them. ``padding``: each input's left padding of the prompt (backends with ``pads_prompts``)."""
        if padding is None:
            return self.backend.decoder_state(hidden, cross_mask, group, max_length, expand, cross_kv)
        return self.backend.decoder_state(hidden, cross_mask, group, max_length, expand, cross_kv, padding)

    # --- the front end's hook (besides the engine's _row_length and _collate) ------------------------------

    def _prompt(self, batch: int, s: GenerationSettings) -> Tensor:
        """The decoder prompt [batch, prompt_len]."""
        raise NotImplementedError

    @torch.inference_mode()
    def forward_logits(self, inputs: Tensor, attention_mask: Tensor | None, decoder_input_ids: Tensor) -> Tensor:
        """Teacher-forced float32 logits [batch, len, vocab] of ``decoder_input_ids`` [batch, len], as
        transformers' ``model(input_ids, attention_mask, decoder_input_ids=...).logits`` (no logits rules).
        ``inputs``: source ids [batch, src_len] (Whisper: log-mel features). The quality bench compares
        compute types with it."""
        if not self.backend.teacher_forcing:
            raise ValueError(f"{self.backend.label}: forward_logits needs the model directory; an export decodes only")
        mask = None if attention_mask is None else torch.as_tensor(attention_mask).to(self.device)
        hidden, cross_mask = self.encode(torch.as_tensor(inputs).to(self.device), mask)
        targets = torch.as_tensor(decoder_input_ids, dtype=torch.long).to(self.device)
        attn = self.spec.decoder.layers[0].self_attn
        cross_kv = build_cross_kv(self.spec, hidden)
        state = DecoderState(cross_kv, cross_mask, 1, attn.kv_heads, attn.head_dim, targets.shape[1])
        return self.head.logits(decode_step(self.spec, state, targets, all_positions=True))

    # --- one batch ---------------------------------------------------------------------------------------

    @property
    def joins(self) -> bool:
        return isinstance(self.backend, EagerBackend)

    def plan_batch(self, inputs, mask, s, generator, hooks, trace, prompts, head) -> Plan:
        hidden, cross_mask = self.encode(inputs, mask)
        batch = hidden.shape[0]
        if prompts is None:
            prompt = self._prompt(batch, s)
        else:  # forced prefixes: lengths count them, as transformers counts decoder_input_ids
            prompt = prompts.to(self.device)
            s = for_prompt(s, prompt.shape[1], self.spec.max_positions)

        def make_decoder(fanout, expand):
            return self.decoder_state(hidden, cross_mask, fanout.group, s.max_length, expand)

        return plan_search(make_decoder, head, prompt, s, self.spec.vocab_size, generator, hooks=hooks, trace=trace)


class EagerBackend:
    """The eager runtime behind an encoder-decoder model: the encoder (token ids with a mask, or Whisper's
    log-mel features), every layer's cross-attention K/V, and the decoder state over a preallocated cache."""

    label = None  # repr: the model's directory
    teacher_forcing = True  # forward_logits works
    word_timestamps = True  # the alignment heads' attention can be read
    pads_prompts = True  # decoder prompts of other lengths can share a batch, left-padded (``decoder_state``)

    def __init__(self, spec, device, audio: bool):
        self.spec, self.device, self.audio = spec, device, audio

    def encode(self, inputs: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.audio:  # Whisper attends to every encoder position (the 30 s window is always full length)
            return encode(self.spec.encoder, inputs.to(device=self.device, dtype=torch.float32), None), None
        inputs = inputs.to(self.device)
        mask = torch.ones_like(inputs) if mask is None else mask.to(self.device)
        return encode_unpadded(self.spec.encoder, inputs, mask), mask.bool()[:, None, None, :]

    def cross_kv(self, hidden: Tensor) -> list[tuple[Tensor, Tensor]]:
        return build_cross_kv(self.spec, hidden)

    def decoder_state(self, hidden, cross_mask, group: int, max_length: int, expand=None, cross_kv=None,
                      padding=None):  # fmt: skip
        if cross_kv is None:
            cross_kv = build_cross_kv(self.spec, hidden)
        if expand is not None:
            cross_kv = [(k.index_select(0, expand), v.index_select(0, expand)) for k, v in cross_kv]
            cross_mask = None if cross_mask is None else cross_mask.index_select(0, expand)
            padding = None if padding is None else padding.index_select(0, expand)
        if padding is not None:  # per input -> per row
            padding = padding.repeat_interleave(group)
        attn = self.spec.decoder.layers[0].self_attn
        state = DecoderState(cross_kv, cross_mask, group, attn.kv_heads, attn.head_dim, max_length, padding=padding)
        return EagerDecoder(self.spec, state, prompt_share=group)

    def source_vocab_size(self) -> int:
        return self.spec.encoder.embed.tokens.shape[0]

    def input_shape(self) -> tuple[int, int]:
        """Whisper: mel bins, and the mel frames the encoder expects (3000: two per encoder position)."""
        front = self.spec.encoder.embed
        return front.convs[0].weight.shape[1], 2 * front.positions.shape[0]


class EagerDecoder:
    """``decode_step`` over a ``DecoderState``, as the search runner (``generation.runner``) drives it: the
    ``prompt_share`` consecutive rows of a sentence (its beams; a decoder-only input's beams or samples) may
    share one prefill of their prompt."""

    def __init__(self, spec, state: DecoderState, prompt_share: int = 1):
        self.spec, self.state, self.prompt_share = spec, state, prompt_share
        self.select = state.select
        self.narrow = state.narrow
        self.widen = state.widen

    def step(self, tokens: Tensor, all_positions: bool = False) -> Tensor:
        return decode_step(self.spec, self.state, self.first_tokens(tokens), all_positions)

    def first_tokens(self, tokens: Tensor) -> Tensor:
        """The tokens the decoder reads: the search loops see left padding as id `vocab_size`, which no logits
        rule matches (transformers' repetition penalty ignores padding too); the prefill reads it as id 0,
        masked."""
        if self.state.length == 0 and self.state.padding is not None:
            return tokens.masked_fill(tokens >= self.spec.vocab_size, 0)
        return tokens
