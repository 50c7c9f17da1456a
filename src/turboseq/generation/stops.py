"""Stop strings: a row stops as soon as its last token completes one of the strings (the token may run past
the string's end), as transformers' ``StopStringCriteria`` decides it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class StopStrings:
    def __init__(self, strings: Sequence[str], decode: Callable[[list[int]], str]):
        self.strings = list(strings)
        self.decode = decode  # token ids -> text, special tokens skipped
        # a string of n characters spans at most n tokens that each add text; one more for the last token
        self.window = max(len(t) for t in self.strings) + 1

    def __call__(self, seqs: Tensor) -> Tensor:
        """Bool mask over the rows of ``seqs`` [rows, length] (prompt included) of those to stop."""
        done = []
        for row in seqs[:, -self.window :].tolist():
            before, after = self.decode(row[:-1]), self.decode(row)
            # an occurrence that ends after the text before the last token was completed by it
            done.append(any(after.find(t, max(0, len(before) - len(t) + 1)) >= 0 for t in self.strings))
        return torch.tensor(done, dtype=torch.bool, device=seqs.device)
