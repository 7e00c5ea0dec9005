"""The text of one row as a client sees it: decoded without special tokens and cut before the first stop string.

While a row streams, the end of its text is held back when it may yet change: a multi-byte character whose
bytes are not all sampled (decoded as U+FFFD), or the start of a stop string that would have to be unsaid."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class RowText:
    decode: Callable[[list[int]], str]  # without special tokens
    stop: tuple[str, ...]
    text: str = ""
    sent: int = 0  # characters already given out

    def update(self, ids: list[int]) -> bool:
        """Decode the row's ids; True when a stop string appeared (the text then ends before it)."""
        self.text = self.decode(ids)
        cut = min((i for s in self.stop if (i := self.text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
        return cut >= 0

    def release(self, final: bool) -> str:
        """The text not given out yet that is safe to give out now: all of it once the row is over."""
        end = len(self.text) if final else self._settled()
        delta = self.text[self.sent : end]
        self.sent += len(delta)
        return delta

    def _settled(self) -> int:
        end = len(self.text.rstrip("\ufffd"))
        held = max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k], 0, end)), default=0)
        return end - held
