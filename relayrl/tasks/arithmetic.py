"""The embedded default task: multi-step arithmetic with the intermediate results written out.

Prompt `Q:23+45-17\nA:` -> solution `23+45=68\n68-17=51\n#51`. Operators apply left to right,
so every line is one two-operand step that a small model can learn to compute.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from relayrl.tasks.base import Item

ANSWER_RE = re.compile(r"#(-?\d+)")


@dataclass
class ArithmeticConfig:
    terms: int = 3  # operands per problem: the difficulty knob
    max_value: int = 19  # operands drawn from [0, max_value]
    operators: str = "+-"
    heldout_size: int = 256
    seed: int = 1234


def extract_arithmetic(completion: str) -> str | None:
    """The first `#answer`: what the model committed to."""
    m = ANSWER_RE.search(completion)
    return m.group(1) if m else None


def score_arithmetic(completion: str, answer: str) -> float:
    return float(extract_arithmetic(completion) == answer)


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def worked_steps(expr: str) -> tuple[list[str], int]:
    """The steps of an expression of non-negative operands (`23+45-17`), left to right, one two-operand step a
    line (`23+45=68`, `68-17=51`), and its value: the task's solutions, and what a checker of them recomputes."""
    nums, ops = [int(n) for n in re.findall(r"\d+", expr)], re.findall(r"[-+*]", expr)
    steps, acc = [], nums[0]
    for op, n in zip(ops, nums[1:], strict=True):
        new = _apply(acc, op, n)
        steps.append(f"{acc}{op}{n}={new}")
        acc = new
    return steps, acc


class ArithmeticTask:
    stop_strings: tuple[str, ...] = ()
    scorer = staticmethod(score_arithmetic)
    extract = staticmethod(extract_arithmetic)

    def __init__(self, cfg: ArithmeticConfig):
        if cfg.terms < 2:
            raise ValueError(f"task.arithmetic.terms must be >= 2, got {cfg.terms}")
        if not cfg.operators or set(cfg.operators) - set("+-*"):
            raise ValueError(f"task.arithmetic.operators must be a non-empty subset of '+-*', got {cfg.operators!r}")
        self.cfg = cfg
        self.name = f"arithmetic-{cfg.terms}x{cfg.max_value}"
        rng = random.Random(f"heldout-{cfg.seed}")
        self._heldout: list[Item] = []
        seen: set[str] = set()
        while len(self._heldout) < cfg.heldout_size:
            item = self._make(rng)
            if item.prompt not in seen:
                seen.add(item.prompt)
                self._heldout.append(item)
        self._heldout_prompts = seen

    def _make(self, rng: random.Random) -> Item:
        nums = [rng.randint(0, self.cfg.max_value) for _ in range(self.cfg.terms)]
        ops = [rng.choice(self.cfg.operators) for _ in range(self.cfg.terms - 1)]
        expr = str(nums[0]) + "".join(f"{o}{n}" for o, n in zip(ops, nums[1:], strict=True))
        steps, value = worked_steps(expr)
        return Item(prompt=f"Q:{expr}\nA:", answer=str(value), solution="\n".join(steps) + f"\n#{value}")

    def train_item(self, index: int) -> Item:
        rng = random.Random(f"train-{self.cfg.seed}-{index}")
        while True:
            item = self._make(rng)
            if item.prompt not in self._heldout_prompts:
                return item

    def heldout(self) -> list[Item]:
        return self._heldout
