"""Multi-message completions (SPOC): solution, verification, solution, verification, ... in one generation.

`SpocFormat` is the one rule that reads and writes the format: the sampler's stop rule, the split of a
rollout into messages, the per-message rewards and the PairSFT data all go through it. A verification
opens with `open`, may name an error, and ends with `ask` and a verdict, " Yes" or " No"; a solution that
follows a verification starts on a new line. The completion ends at the first Yes or at the `turn_cap`-th
verdict: whatever follows in the same token still belongs to that verification.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from relayrl.rollout import Message

YES, NO = "Yes", "No"
RESTART = "\n"  # what a solution that follows a verification starts with


class Span(NamedTuple):
    """Characters [start, end) of a completion's text that form one message."""

    role: str
    start: int
    end: int


@dataclass(frozen=True)
class SpocFormat:
    open: str = "\nCheck:"
    ask: str = " Correct?"
    turn_cap: int = 3  # verdicts before the completion ends, i.e. at most this many solutions

    def _verdicts(self) -> re.Pattern:
        return re.compile(re.escape(self.ask) + f" ({YES}|{NO})")

    def verification(self, critique: str, correct: bool) -> str:
        """A verification message; the critique may not contain the markers, or it would end the message early."""
        critique = critique.replace(self.open, " ").replace(self.ask, " ")
        return f"{self.open}{critique}{self.ask} {YES if correct else NO}"

    def parse(self, text: str) -> list[Span]:
        """The messages of a completion, in order, covering every character (at least one, a solution)."""
        spans, pos, turn, verdicts = [], 0, 0, self._verdicts()
        while True:
            turn += 1
            opened = text.find(self.open, pos)
            if opened < 0:
                return [*spans, Span("solution", pos, len(text))]
            spans.append(Span("solution", pos, opened))
            m = verdicts.search(text, opened + len(self.open))
            last = m is None or m.group(1) == YES or turn >= self.turn_cap or m.end() == len(text)
            spans.append(Span("verification", opened, len(text) if last else m.end()))
            if last:
                return spans
            pos = m.end()

    def verdict(self, message: str) -> bool | None:
        """True (Yes), False (No), or None for a verification cut before its verdict."""
        m = self._verdicts().search(message)
        return None if m is None else m.group(1) == YES

    @property
    def triggers(self) -> tuple[str, ...]:
        """Where the stop rule can first hold: the end of a verdict (engines that stop on strings check it there)."""
        return (f"{self.ask} {YES}", f"{self.ask} {NO}")

    def __call__(self, text: str) -> bool:
        """The stop rule (`SamplingConfig.stop_rule`): a Yes, or the turn cap's verdict, ends the completion."""
        spans = self.parse(text)
        last = spans[-1]
        if last.role != "verification":
            return False
        verdict = self.verdict(text[last.start : last.end])
        return verdict is True or (verdict is False and len(spans) // 2 >= self.turn_cap)


def token_messages(ids: list[int], decode: Callable[[list[int]], str], spans: list[Span]) -> list[Message]:
    """Character spans of `decode(ids)` -> token spans that cover `ids`, without re-tokenizing.

    A message ends at the fewest leading tokens whose decoded text reaches its last character, so a token
    that straddles two messages (BPE) belongs to the first, and trailing special tokens to the last.
    """

    def length(k: int) -> int:
        return len(decode(ids[:k]))

    cuts = [0]
    for span in spans[:-1]:
        cuts.append(bisect.bisect_left(range(len(ids) + 1), span.end, lo=cuts[-1], key=length))
    cuts.append(len(ids))
    return [Message(start, end, span.role) for span, (start, end) in zip(spans, itertools.pairwise(cuts), strict=True)]
