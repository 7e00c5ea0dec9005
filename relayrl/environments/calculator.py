"""Tools for the built-in arithmetic: a calculator (evaluated here, safely) and Python (run in the sandbox)."""

from __future__ import annotations

import ast
import operator

from relayrl.environments.base import Environment, Reply
from relayrl.rollout import ENVIRONMENT, POLICY
from relayrl.sandbox.execute import run
from relayrl.tasks.base import Item

OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
MAX_DIGITS = 60  # a product of products could grow without bound: a longer result is an error


def calculate(expression: str) -> str:
    """The integer value of `expression` (integers, + - *, parentheses, unary minus), or "error"."""
    try:
        value = _value(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ValueError, RecursionError):
        return "error"
    return "error" if len(str(abs(value))) > MAX_DIGITS else str(value)


def _value(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        value = OPERATORS[type(node.op)](_value(node.left), _value(node.right))
        if len(str(abs(value))) > MAX_DIGITS:
            raise ValueError("too large")
        return value
    raise ValueError(f"not arithmetic: {type(node).__name__}")


class ArithmeticTool(Environment):
    """A tool for the arithmetic task; a turn without a call ends the episode (it holds the answer)."""

    def argument(self, expression: str) -> str:
        """What a call that computes `expression` passes the tool."""
        raise NotImplementedError

    def demonstration(self, item: Item) -> list[tuple[str, str]] | None:
        """Call the tool on the item's expression, then write its value as the answer (`#value`)."""
        expression = item.meta.get("expression")
        if expression is None:
            return None
        value = calculate(expression)
        call = self.format.call(self.tools[0], self.argument(expression))
        return [(POLICY, call), (ENVIRONMENT, value), (POLICY, f"#{value}")]


class Calculator(ArithmeticTool):
    """`<calc>12*(3+4)</calc>` -> `<out>84</out>`."""

    tools = ("calc",)

    def argument(self, expression: str) -> str:
        return expression

    def respond(self, item: Item, turns: list[str]) -> Reply | None:
        call = self.format.parse(turns[-1])
        return None if call is None else Reply(calculate(call.argument) if call.name in self.tools else "error")


class PythonTool(ArithmeticTool):
    """`<python>print(2**10)</python>` -> its output, run in the sandbox (`EnvironmentConfig.sandbox`)."""

    tools = ("python",)

    def argument(self, expression: str) -> str:
        return f"print({expression})"

    def respond(self, item: Item, turns: list[str]) -> Reply | None:
        call = self.format.parse(turns[-1])
        if call is None:
            return None
        result = run(call.argument, config=self.cfg.sandbox)
        if result.ok:
            return Reply(result.stdout.strip())
        lines = result.stderr.strip().splitlines()
        return Reply(lines[-1] if lines else f"{result.status} {result.detail}".strip())
