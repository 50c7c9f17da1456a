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

from torch import Tensor

from turboseq.generation.runner import Plan

# step_together(decoders, tokens) -> hidden: one new token per row of each decoder, hidden states concatenated
StepTogether = Callable[[list, list[Tensor]], Tensor]
# done(result, error): a search's per-input sequences, or the exception that ended it
Done = Callable[[list | None, BaseException | None], None]


class _Products:
    """One step's hidden states over every running row and the LM head's products over them, each made the
    first time a search asks for it."""

    def __init__(self, head, hidden: Tensor):
        self.head, self.hidden = head, hidden
        self._logits = self._screen = None

    def logits(self) -> Tensor:
        if self._logits is None:
            self._logits = self.head.logits(self.hidden)
        return self._logits

    def screen(self):
        if self._screen is None:
            self._screen = self.head.screen_products(self.hidden)
        return self._screen


class SharedHead:
    """The LM head as one search of a running batch sees it: for the hidden states it was handed this step, the
    products are its rows of the step's shared ones; for anything else (its prompt), its own."""

    def __init__(self, head):
        self.head = head
        self.products: _Products | None = None
        self.rows = slice(0)
        self.hidden: Tensor | None = None  # this step's hidden states of the search's rows (a view)

    def at(self, products: _Products | None, rows: slice) -> None:
        self.products, self.rows = products, rows
        self.hidden = None if products is None else products.hidden[rows]

    def _shared(self, h: Tensor) -> bool:
        return self.products is not None and h is self.hidden

    def logits(self, h: Tensor) -> Tensor:
        if not self._shared(h):
            return self.head.logits(h)
        return self.products.logits()[self.rows]

    def greedy(self, h: Tensor, input_ids: Tensor, procs) -> Tensor | None:
        if not self._shared(h):
            return self.head.greedy(h, input_ids, procs)
        products = self.products.screen()
        if products is None:
            return None
        mine = products[self.rows] if isinstance(products, Tensor) else tuple(p[self.rows] for p in products)
        return self.head.greedy(h, input_ids, procs, mine)


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

    @property
    def rows(self) -> int:
        """Decoder rows running (beams and sampled copies counted)."""
        return sum(search.tokens.shape[0] for search in self.running)

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
        products = _Products(self.head, hidden)
        start = 0
        for search in running:
            rows = search.tokens.shape[0]
            search.head.at(products, slice(start, start + rows))
            start += rows
        self.running += [search for search in running if search.send(search.head.hidden)]

    def abort(self, error: BaseException) -> None:
        """End every search with ``error``."""
        searches, self.joining, self.running = [*self.joining, *self.running], [], []
        for search in searches:
            search.done(None, error)
