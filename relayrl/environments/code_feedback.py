"""Write, run the examples, read the failure, revise: each turn's code is run on the item's worked examples in the
sandbox; the first failure is the reply, and an all-passing turn ends the episode (the task's scorer then runs
the hidden tests).

An item brings `meta["examples"]`, (call, expected literal) pairs (`relayrl.tasks.humaneval.public_examples`),
and `meta["prefix"]`, the code a turn's code follows (HumanEval: the function's header and docstring). A turn is
a function body continuing the prefix (the completion format) or a ```python block (chat), the same rule the
HumanEval scorer applies (`solution_code`).
"""

from __future__ import annotations

from relayrl.environments.base import Environment, Reply
from relayrl.rewards.code_execution import examples_program, failure_report, solution_code
from relayrl.sandbox.execute import run
from relayrl.tasks.base import Item


class CodeFeedback(Environment):
    """Answers every turn: no tool call to parse, so no stop strings of its own."""

    tools = ()

    def respond(self, item: Item, turns: list[str]) -> Reply | None:
        examples = item.meta.get("examples")
        if not examples:
            return None
        code = solution_code(item.meta.get("prefix", ""), turns[-1])
        result = run(examples_program(code, examples), config=self.cfg.sandbox)
        return None if result.ok else Reply(failure_report(result)[: self.cfg.reply_chars])
