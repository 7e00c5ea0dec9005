"""A code task the tiny character-level model can learn: write a Python expression that makes a target.

Prompt `N:3,7,5 T:26\\nA:` -> solution `3*7+5`: each given number used exactly once, with + - * and parentheses.
The completion's first line is scored by running `print(<expression>)` in the sandbox, so the reward is the
program's own output, as for any code task; an expression with other numbers or characters scores 0 unrun.
The target is made from a random expression tree over the numbers in a shuffled order (the solution, written
with only the parentheses it needs), so every problem has a solution and a right one can differ from it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from relayrl.rewards.code_execution import printed
from relayrl.schema import check, non_negative, setting
from relayrl.tasks.base import Item, ProceduralTask

ALLOWED = frozenset("0123456789+-*() ")
NUMBER_RE = re.compile(r"\d+")
PRECEDENCE = {"+": 1, "-": 1, "*": 2}
LEAF = 3  # a number binds tighter than any operator


@dataclass
class ExpressionConfig:
    numbers: int = setting(3, ge=2, le=8)  # numbers given per problem, each to be used once
    max_value: int = non_negative(9)  # numbers drawn from [0, max_value]
    heldout_size: int = setting(256, gt=0, le=10**6)
    seed: int = 1234

    def rules(self) -> Iterator[tuple[str, str]]:
        # A training draw is redrawn while held out: each held-out prompt owns at most one tuple of numbers, whose
        # draws are 1 in (max_value + 1) ** numbers, so holding out at most half of the tuples keeps a draw to 2
        # tries on average (and the held-out set can always be filled).
        if self.heldout_size > (tuples := (self.max_value + 1) ** self.numbers) // 2:
            half = f"half the {tuples} number tuples of numbers={self.numbers}, max_value={self.max_value}"
            yield "heldout_size", f"must be <= {tuples // 2}, {half}; got {self.heldout_size}"


def expression_of(completion: str) -> str:
    """The completion's first line: where the expression ends (the tokenizer's end-of-sequence or a newline)."""
    return completion.split("\n", 1)[0].strip()


def extract_expression(completion: str) -> str | None:
    """The expression, spaces dropped, for majority votes: the target is given, so samples vote on how to make it."""
    return expression_of(completion).replace(" ", "") or None


def score_expression(completion: str, answer: str) -> float:
    """1.0 iff the expression uses exactly the given numbers and only + - * ( ), and running `print(expression)`
    in the sandbox prints the target. `answer` is `3,7,5=26`."""
    numbers, target = answer.split("=", 1)
    expr = expression_of(completion)
    if set(expr) - ALLOWED or "**" in expr or sorted(NUMBER_RE.findall(expr)) != sorted(numbers.split(",")):
        return 0.0  # `**` would be a power, and numbers are compared as written: `07` is not 7
    return float(printed(f"print({expr})") == target)


def _tree(numbers: list[int], rng: random.Random) -> tuple[str, int, int]:
    """A random binary tree of + - * over `numbers` in order: (its text, its value, its precedence)."""
    if len(numbers) == 1:
        return str(numbers[0]), numbers[0], LEAF
    split = rng.randint(1, len(numbers) - 1)
    (left, a, pl), (right, b, pr), op = _tree(numbers[:split], rng), _tree(numbers[split:], rng), rng.choice("+-*")
    p = PRECEDENCE[op]
    left = f"({left})" if pl < p else left
    right = f"({right})" if pr < p or (op == "-" and pr == p) else right  # a-(b-c), a-(b+c); a+(b-c) needs none
    return f"{left}{op}{right}", a + b if op == "+" else a - b if op == "-" else a * b, p


class ExpressionTask(ProceduralTask):
    stop_strings: tuple[str, ...] = ("\n",)  # the expression is one line
    scorer = staticmethod(score_expression)
    extract = staticmethod(extract_expression)

    def __init__(self, cfg: ExpressionConfig):
        check(cfg, "task.expression.")  # also where the config was built in Python: a bad one would never end
        self.cfg = cfg
        self.name = f"expression-{cfg.numbers}x{cfg.max_value}"
        super().__init__(cfg.seed, cfg.heldout_size)

    def _make(self, rng: random.Random) -> Item:
        numbers = [rng.randint(0, self.cfg.max_value) for _ in range(self.cfg.numbers)]
        expr, value, _ = _tree(rng.sample(numbers, len(numbers)), rng)
        given = ",".join(map(str, numbers))
        return Item(prompt=f"N:{given} T:{value}\nA:", answer=f"{given}={value}", solution=expr)
