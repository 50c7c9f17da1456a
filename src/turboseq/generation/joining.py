"""Continuous batching: searches that join a running batch at a step boundary and leave it the step they end.

Every search (``runner.Plan``: one request's batch) keeps its own loop, settings, logits rules, random generator and
decoder state, so its tokens are those of the same request decoded alone. What the searches share is the work
that costs: one decoder step over every running row (``step_together``: the dense layers once, each search's
attention over its own cache and encoder K/V) and the LM head's product over those rows, made once per step when
the first search asks for it (``SharedHead``). A search that joins runs its prompt alone first (prompts differ
in length), then steps with the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from turboseq.generation.runner import Plan

# step_together(decoders, tokens) -> hidden: one new token per row of each decoder, hidden states concatenated
StepTogether = Callable[[list, list[Tensor]], Tensor]
# done(result, error): a search's per-input sequences, or the exception that ended it
Done = Callable[[list | None, BaseException | None], None]


class _Products:
    """One step's hidden states over every running row and the LM head's products over them: the full logits
    over the rows of the searches that asked for them the step before, the greedy screen over those that
    screened, each made once, the first time a search asks; a search that asks for what it did not ask for the
    step before gets its own."""

    def __init__(self, head, hidden: Tensor, searches: list[_Search]):
        self.head, self.hidden = head, hidden
        self.wants = {
            kind: [search.head.rows for search in searches if search.head.asked == kind]
            for kind in ("logits", "screen")
        }
        self.made: dict = {}

    def _made(self, kind: str, make):
        """``kind``'s products over its searches' rows, and where each search's rows start in them."""
        if kind not in self.made:
            spans = self.wants[kind]
            if len(spans) == 1 or sum(r.stop - r.start for r in spans) == self.hidden.shape[0]:  # rows in one run
                offset = spans[0].start if len(spans) == 1 else 0
                hidden = self.hidden[offset : spans[-1].stop]
                starts = {r.start: r.start - offset for r in spans}
            else:
                hidden = torch.cat([self.hidden[r] for r in spans])
                starts, at = {}, 0
                for r in spans:
                    starts[r.start] = at
                    at += r.stop - r.start
            self.made[kind] = (make(hidden), starts)
        return self.made[kind]

    def get(self, kind: str, rows: slice, make):
        if rows not in self.wants[kind]:
            return make(self.hidden[rows])
        products, starts = self._made(kind, make)
        at = starts[rows.start]
        mine = slice(at, at + rows.stop - rows.start)
        if products is None or isinstance(products, Tensor):
            return None if products is None else products[mine]
        return tuple(p[mine] for p in products)


class SharedHead:
    """The LM head as one search of a running batch sees it: for the hidden states it was handed this step, the
    products are its rows of the step's shared ones; for anything else (its prompt), its own."""

    def __init__(self, head):
        self.head = head
        self.products: _Products | None = None
        self.rows = slice(0)
        self.hidden: Tensor | None = None  # this step's hidden states of the search's rows (a view)
        self.asked: str | None = None  # what the search asked for last: "logits" or "screen"

    def at(self, products: _Products | None, rows: slice) -> None:
        self.products, self.rows = products, rows
        self.hidden = None if products is None else products.hidden[rows]

    def _shared(self, h: Tensor) -> bool:
        return self.products is not None and h is self.hidden

    def logits(self, h: Tensor) -> Tensor:
        self.asked = "logits"
        if not self._shared(h):
            return self.head.logits(h)
        return self.products.get("logits", self.rows, self.head.logits)

    def greedy(self, h: Tensor, input_ids: Tensor, procs) -> Tensor | None:
        self.asked = "screen"
        if not self._shared(h):
            return self.head.greedy(h, input_ids, procs)
        products = self.products.get("screen", self.rows, self.head.screen_products)
        if products is None:
            return None
        return self.head.greedy(h, input_ids, procs, products)


@dataclass(eq=False)
class _Search:
    plan: Plan
    head: SharedHead
    done: Done
    tokens: Tensor | None = None  # the next step's tokens [rows, 1], once its prompt has run

    def send(self, hidden: Tensor) -> bool:
        """Run the search's loop up to its next step; False once it ended (and ``done`` was called)."""
        try:
            self.tokens = self.plan.loop.send(hidden)
            return True
        except StopIteration as end:
            result, error = end.value, None
        except Exception as err:  # noqa: BLE001 (the search's own failure: its request gets it)
            result, error = None, err
        self.head.at(None, slice(0))
        if error is None:
            try:
                result = self.plan.finish(result)
            except Exception as err:  # noqa: BLE001
                result, error = None, err
        self.done(result, error)
        return False


class JoinedBatch:
    """A running batch: ``join`` adds a search, ``step`` advances every search by one token (the ones that
    joined since the last step run their prompts), and each search's ``done`` is called the step it ends."""

    def __init__(self, head, step_together: StepTogether):
        self.head, self.step_together = head, step_together
        self.joining: list[_Search] = []  # joined, prompt not run yet
        self.running: list[_Search] = []

    def __len__(self) -> int:
        return len(self.joining) + len(self.running)

    @torch.inference_mode()
    def join(self, build: Callable[[SharedHead], Plan], done: Done, on_input=None) -> None:
        """Add the search ``build(head)`` makes (it may encode its inputs here); ``done`` gets its result;
        ``on_input(input, sequences)``, if given, each input that is final before the search ends (``Plan.on_input``).
        A search that cannot be built is answered at once with the error."""
        head = SharedHead(self.head)
        try:
            plan = build(head)
        except Exception as err:  # noqa: BLE001 (the request's own error)
            done(None, err)
            return
        if on_input is not None:
            plan.on_input(on_input)
        self.joining.append(_Search(plan, head, done))

    @torch.inference_mode()
    def step(self) -> None:
        """One token for every running search and for every search that joined with a one-token prompt (an
        encoder-decoder's start token); a longer prompt runs alone. An error of the shared step is raised (the
        searches are then in an unknown state: ``abort`` them)."""
        running, joining, self.running, self.joining = self.running, self.joining, [], []
        for search in joining:
            try:
                search.tokens = next(search.plan.loop)
                if search.tokens.shape[1] == 1:
                    running.append(search)
                    continue
                hidden = search.plan.decoder.step(search.tokens)
            except Exception as err:  # noqa: BLE001
                search.done(None, err)
                continue
            if search.send(hidden):
                self.running.append(search)
        if not running:
            return
        decoders = [search.plan.decoder.decoder for search in running]
        hidden = self.step_together(decoders, [search.tokens for search in running])
        start = 0
        for search in running:
            rows = search.tokens.shape[0]
            search.head.rows = slice(start, start + rows)
            start += rows
        products = _Products(self.head, hidden, running)
        for search in running:
            search.head.at(products, search.head.rows)
        self.running += [search for search in running if search.send(search.head.hidden)]

    def abort(self, error: BaseException) -> None:
        """End every search with ``error``."""
        searches, self.joining, self.running = [*self.joining, *self.running], [], []
        for search in searches:
            search.done(None, error)
