"""What every task provides: a training stream, a held-out set, and a picklable scorer."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

Scorer = Callable[[str, str], float]
"""(completion text, reference answer) -> reward. Module-level so reward worker processes can pickle it."""


@dataclass(frozen=True)
class Item:
    prompt: str | tuple[dict, ...]  # plain text, or chat messages for the tokenizer's chat template
    answer: str
    solution: str = ""  # a worked demonstration, for the supervised warm start
    meta: dict = field(default_factory=dict, hash=False, compare=False)


def template_problem(template: str) -> str | None:
    """Why a prompt template cannot be filled with a {question}, or None."""
    try:
        template.format(question="")
    except (KeyError, IndexError, ValueError):
        return f"must be a format string of one field, {{question}} (a brace itself: {{{{ or }}}}); got {template!r}"
    return None if "{question}" in template else f"must contain {{question}}; got {template!r}"


class Task(Protocol):
    name: str
    scorer: Scorer
    extract: Callable[[str], str | None]  # the final answer of a completion, for majority votes
    stop_strings: tuple[str, ...]

    def train_item(self, index: int) -> Item:
        """Item `index` of the (endless, deterministic) training stream; never a held-out item."""

    def heldout(self) -> list[Item]: ...


class ProceduralTask:
    """A task whose items a seeded generator draws (`_make`): `heldout_size` distinct held-out prompts, and a
    training stream, item `index` drawn from its own seed, that redraws any held-out prompt."""

    def __init__(self, seed: int, heldout_size: int):
        self.seed = seed
        rng = random.Random(f"heldout-{seed}")
        self._heldout: list[Item] = []
        seen: set[str | tuple[dict, ...]] = set()
        while len(self._heldout) < heldout_size:
            item = self._make(rng)
            if item.prompt not in seen:
                seen.add(item.prompt)
                self._heldout.append(item)
        self._heldout_prompts = seen

    def _make(self, rng: random.Random) -> Item:
        raise NotImplementedError

    def train_item(self, index: int) -> Item:
        rng = random.Random(f"train-{self.seed}-{index}")
        while True:
            item = self._make(rng)
            if item.prompt not in self._heldout_prompts:
                return item

    def heldout(self) -> list[Item]:
        return self._heldout
