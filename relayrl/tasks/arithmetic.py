"""The embedded default task: multi-step arithmetic with the intermediate results written out.

Prompt `Q:23+45-17\nA:` -> solution `23+45=68\n68-17=51\n#51`. Operators apply left to right,
so every line is one two-operand step that a small model can learn to compute.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from relayrl.schema import check, non_negative, setting
from relayrl.tasks.base import Item, ProceduralTask

ANSWER_RE = re.compile(r"#(-?\d+)")


@dataclass
class ArithmeticConfig:
    terms: int = setting(3, ge=2, le=64)  # operands per problem: the difficulty knob (64: past any context)
    max_value: int = non_negative(19)  # operands drawn from [0, max_value]
    operators: str = "+-"  # drawn from, each step: a non-empty subset of +-*
    heldout_size: int = setting(256, gt=0, le=10**6)  # a million: past any evaluation budget
    seed: int = 1234

    def distinct_problems(self) -> int:
        """Every choice of operands and operators writes a different prompt: decimal operands between operators
        read back one way."""
        return (self.max_value + 1) ** self.terms * len(set(self.operators)) ** (self.terms - 1)

    def rules(self) -> Iterator[tuple[str, str]]:
        if not self.operators or set(self.operators) - set("+-*"):
            yield "operators", f"must be a non-empty subset of '+-*'; got {self.operators!r}"
        elif self.heldout_size > (n := self.distinct_problems()) // 2:
            # The held-out set is drawn until it has heldout_size distinct problems and each training item is
            # redrawn until it is not one of them: with every problem held out neither ends, and with most the
            # training stream is a handful of problems. At most half keeps a training draw to 2 tries on average.
            of = f"terms={self.terms}, max_value={self.max_value}, operators={self.operators!r}"
            half = f"half the {n} distinct problems of {of} (training needs the rest)"
            yield "heldout_size", f"must be <= {n // 2}, {half}; got {self.heldout_size}"


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


class ArithmeticTask(ProceduralTask):
    stop_strings: tuple[str, ...] = ()
    scorer = staticmethod(score_arithmetic)
    extract = staticmethod(extract_arithmetic)

    def __init__(self, cfg: ArithmeticConfig):
        check(cfg, "task.arithmetic.")  # also where the config was built in Python: a bad one would never end
        self.cfg = cfg
        self.name = f"arithmetic-{cfg.terms}x{cfg.max_value}"
        super().__init__(cfg.seed, cfg.heldout_size)

    def _make(self, rng: random.Random) -> Item:
        nums = [rng.randint(0, self.cfg.max_value) for _ in range(self.cfg.terms)]
        ops = [rng.choice(self.cfg.operators) for _ in range(self.cfg.terms - 1)]
        expr = str(nums[0]) + "".join(f"{o}{n}" for o, n in zip(ops, nums[1:], strict=True))
        steps, value = worked_steps(expr)
        solution = "\n".join(steps) + f"\n#{value}"
        return Item(prompt=f"Q:{expr}\nA:", answer=str(value), solution=solution, meta={"expression": expr})
