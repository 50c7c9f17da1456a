"""The search runner: what every model does before and after a search loop, in one place.

Given a batch's decoder prompt, its resolved settings and a way to build the decoder, ``run_search`` works out how
many decoder rows each input needs (``Fanout``: beams, or sampled copies with a decoder entry each), builds the
logits processors, attaches the call's side channels as listeners, prefills a prompt once per input where the
decoder can share it, chooses greedy/sampling or beam search, and returns each input's sequences.

A decoder (``models.engine.EagerDecoder``, ``export.graphs.ProgramState``) has ``step(tokens) -> hidden``,
``select(rows, sentences)`` and ``prompt_share``: how many consecutive rows may share one prefill (1: none); one
that shares also has ``narrow(share)`` and ``widen(share, group)`` (``runtime.cache.DecoderState``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from turboseq.generation.listeners import Listener, listeners_for
from turboseq.generation.processors import build_processors
from turboseq.generation.search import Steps, beam_steps, drive, greedy_steps
from turboseq.generation.settings import GenerationSettings


@dataclass(frozen=True)
class Fanout:
    """The decoder rows of one input: ``group`` consecutive rows sharing a decoder entry (beam search's beams),
    and ``copies`` entries (sampled sequences, ``num_return_sequences`` without beams: each row leaves alone)."""

    group: int
    copies: int

    @classmethod
    def of(cls, s: GenerationSettings) -> Fanout:
        return cls(s.num_beams, 1) if s.is_beam else cls(1, s.num_return_sequences)

    def expand(self, batch: int, device) -> Tensor | None:
        """The input of each decoder entry where an input has several (None: one entry per input)."""
        if self.copies == 1:
            return None
        return torch.arange(batch, device=device).repeat_interleave(self.copies)


# make_decoder(fanout, expand) -> the decoder for the batch (``expand``: ``Fanout.expand``)
MakeDecoder = Callable[[Fanout, "Tensor | None"], object]


class _PrefillOnce:
    """The loops' ``step``: a prompt that runs of ``decoder.prompt_share`` consecutive rows have in common (an
    input's beams) goes through the decoder once per run, and its cache is then copied to the run's rows."""

    def __init__(self, decoder, fanout: Fanout):
        self.decoder, self.group = decoder, fanout.group
        self.share = getattr(decoder, "prompt_share", 1)
        self.select = decoder.select

    def step(self, tokens: Tensor) -> Tensor:
        share = self.share
        if share == 1 or tokens.shape[1] == 1:
            return self.decoder.step(tokens)
        self.share = 1  # only the first step reads a prompt
        self.decoder.narrow(share)
        hidden = self.decoder.step(tokens[::share])
        self.decoder.widen(share, self.group)
        return hidden.repeat_interleave(share, dim=0)


class _InputsEnded(Listener):
    """Passes on each input whose sequences are final before the loop ends (``Plan.on_input``); an input of
    several sampled rows once all of them are."""

    def __init__(self, copies: int):
        self.copies, self.callback, self.parts = copies, None, {}

    def ended(self, row: int, result) -> None:
        if self.callback is None:
            return
        if not isinstance(result, list):  # greedy and sampling: one sequence per row
            result = [result]
        if self.copies == 1:
            self.callback(row, result)
            return
        parts = self.parts.setdefault(row // self.copies, {})
        parts[row % self.copies] = result[0]
        if len(parts) == self.copies:
            self.callback(row // self.copies, [parts[k] for k in range(self.copies)])


def _same(i: int, sequences: list[Tensor]) -> list[Tensor]:
    return sequences


@dataclass
class Plan:
    """A search ready to run: its ``loop`` (``generation.search``: yields tokens, is sent hidden states) and the
    ``decoder`` its steps go through (whose ``step`` reads the prompt, shared where it can be). ``finish`` turns
    the loop's result into each input's sequences: ``group`` gathers an input's rows, then ``trim(input,
    sequences)`` applies what the model does to each (a decoder-only model cuts the left padding)."""

    loop: Steps
    decoder: _PrefillOnce
    group: Callable[[list], list[list[Tensor]]]
    ended: _InputsEnded
    trim: Callable[[int, list[Tensor]], list[Tensor]] = _same

    def finish(self, results: list) -> list[list[Tensor]]:
        return [self.trim(i, sequences) for i, sequences in enumerate(self.group(results))]

    def run(self) -> list[list[Tensor]]:
        """The search run alone to its end (its steps through ``decoder``): each input's sequences."""
        return self.finish(drive(self.loop, self.decoder.step))

    def on_input(self, callback: Callable[[int, list[Tensor]], None]) -> None:
        """``callback(input, sequences)`` for each input that is final before the loop ends, as ``finish``
        will give it (the others come with ``finish``)."""
        trim = self.trim  # not the plan itself: the loop holds this listener, and a cycle through the loop would
        # keep its tensors until the cyclic garbage collector runs (rarely, in a server's engine thread)
        self.ended.callback = lambda i, sequences: callback(i, trim(i, sequences))


def plan_search(
    make_decoder: MakeDecoder,
    head,
    prompt: Tensor,
    s: GenerationSettings,
    vocab_size: int,
    generator: torch.Generator | None = None,
    *,
    hooks=None,
    trace=None,
    stop: Callable[[Tensor], Tensor] | None = None,
    listeners: Sequence[Listener] = (),
) -> Plan:
    """``run_search``'s search, not started (``generation.joining`` runs several in one batch)."""
    batch = prompt.shape[0]
    fanout = Fanout.of(s)
    expand = fanout.expand(batch, prompt.device)
    if expand is not None:  # sampled sequences: one decoder row each
        prompt = prompt.index_select(0, expand)
        hooks = None if hooks is None else hooks.select(expand.cpu())
    procs = build_processors(s, vocab_size)
    decoder = _PrefillOnce(make_decoder(fanout, expand), fanout)
    ended = _InputsEnded(fanout.copies)
    observers = listeners_for(trace, hooks, stop, *listeners, ended)
    if s.is_beam:
        loop = beam_steps(decoder.select, head, prompt, s, procs, generator, observers)
        return Plan(loop, decoder, lambda results: results, ended)
    copies = fanout.copies

    def group(flat: list) -> list[list[Tensor]]:
        return [flat[i * copies : (i + 1) * copies] for i in range(batch)]

    return Plan(greedy_steps(decoder.select, head, prompt, s, procs, generator, observers), decoder, group, ended)


def run_search(
    make_decoder: MakeDecoder,
    head,
    prompt: Tensor,
    s: GenerationSettings,
    vocab_size: int,
    generator: torch.Generator | None = None,
    *,
    hooks=None,
    trace=None,
    stop: Callable[[Tensor], Tensor] | None = None,
    listeners: Sequence[Listener] = (),
) -> list[list[Tensor]]:
    """Decode a batch of decoder prompts [batch, prompt_len]: per input, its ``num_return_sequences`` sequences
    (prompt included). ``hooks`` (``RowHooks``, numbered as the inputs), ``trace`` (``return_dict_in_generate``),
    ``stop`` (stop strings) and ``listeners`` follow the loop (``generation.listeners``)."""
    return plan_search(
        make_decoder, head, prompt, s, vocab_size, generator, hooks=hooks, trace=trace, stop=stop, listeners=listeners
    ).run()
