"""A task from a dataset: a Hugging Face hub name, or local JSONL / CSV / parquet files.

Each row needs a question and a reference answer (the field names are configurable).
Bad rows are reported by row number and either rejected (the default) or skipped.
Held-out items come from their own split or file, or are carved from the training rows.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from relayrl.rewards.math_answer import extract_answer, math_scorer
from relayrl.schema import check, choice, nonempty, positive, setting
from relayrl.tasks.base import Item, template_problem

NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class DatasetConfig:
    path: str = ""  # hub name (org/name) or a local file
    subset: str = ""  # hub config name, e.g. "main" for gsm8k
    split: str = nonempty("train")
    heldout: str = ""  # a split of the same hub dataset or a local file; empty: carve from the training rows
    question_field: str = nonempty("question")
    answer_field: str = nonempty("answer")
    solution_field: str = ""  # a worked solution for the supervised warm start; empty: the answer field
    template: str = "{question}\n"  # the prompt (or the user message); {question} is replaced
    chat: bool = False  # wrap the prompt in the tokenizer's chat template, as a user message
    system: str = ""  # chat: an optional system message
    scorer: str = choice("math", "exact")  # math: final answer, equivalence by math-verify; exact: final answer string
    heldout_fraction: float = setting(0.1, gt=0, le=1)  # when carving; 1.0 = every row held out (evaluation only)
    heldout_max: int = positive(256)
    on_bad_row: str = choice("error", "skip")
    seed: int = 0  # which rows are carved out, and each epoch's order

    def rules(self) -> Iterator[tuple[str, str]]:
        if problem := template_problem(self.template):
            yield "template", problem


def final_answer(text: str) -> str:
    """The text after the last '#' marker ('#### 42' in GSM8K), else the last number."""
    if "#" in text:
        return text.rsplit("#", 1)[1].strip().replace(",", "")
    numbers = NUMBER_RE.findall(text)
    return numbers[-1].replace(",", "") if numbers else ""


def score_final_answer(completion: str, answer: str) -> float:
    return float(final_answer(completion) == final_answer(answer) != "")


def extract_final_answer(completion: str) -> str | None:
    return final_answer(completion) or None


SCORERS = {"math": (math_scorer, extract_answer), "exact": (score_final_answer, extract_final_answer)}


def load_rows(cfg: DatasetConfig, key: str = "path") -> list[dict]:
    """The rows of `task.dataset.path` (split `split`) or of `task.dataset.heldout` (a split or a file)."""
    import datasets

    source = getattr(cfg, key)
    if source.startswith("relayrl:"):  # a built-in offline source, cached as a local file
        from relayrl.tasks.gsm8k_offline import resolve

        source = resolve(source)
    if Path(source).suffix in LOCAL_FORMATS:
        if not Path(source).exists():
            raise FileNotFoundError(f"task.dataset.{key}: no such file {source}")
        if source.endswith(".jsonl"):
            return read_jsonl(source, f"task.dataset.{key}")
        return list(datasets.load_dataset(LOCAL_FORMATS[Path(source).suffix], data_files=source, split="train"))
    if key == "heldout":
        return list(datasets.load_dataset(cfg.path, cfg.subset or None, split=source))
    return list(datasets.load_dataset(source, cfg.subset or None, split=cfg.split))


def read_jsonl(path: str, key: str) -> list[dict]:
    """A JSONL file's rows. A line that is not a JSON object is an error naming its line, counted from 1 (the
    hub's reader counts from 0 and raises a traceback); so is a blank line before the last row, which would
    shift every later row's number off its line."""
    lines = Path(path).read_text(encoding="utf-8").rstrip().splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{key}: {path} line {number} is not JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{key}: {path} line {number} is not a JSON object: {line[:80]!r}")
        rows.append(row)
    return rows


def validate_rows(rows: list[dict], cfg: DatasetConfig) -> tuple[list[Item], list[str]]:
    """Items from the good rows, and one message per bad row (row numbers count from 1)."""
    items, problems = [], []
    needed = [cfg.question_field, cfg.answer_field] + ([cfg.solution_field] if cfg.solution_field else [])
    for number, row in enumerate(rows, start=1):
        bad = [
            f"field {f!r} is {'missing' if row.get(f) is None else 'empty'}"
            for f in needed
            if row.get(f) is None or not str(row[f]).strip()
        ]
        if bad:
            problems.append(f"row {number}: " + "; ".join(bad))
            continue
        text = cfg.template.format(question=str(row[cfg.question_field]))
        prompt = (({"role": "system", "content": cfg.system},) if cfg.system else ()) + (
            {"role": "user", "content": text},
        )
        answer = str(row[cfg.answer_field])
        items.append(
            Item(
                prompt=prompt if cfg.chat else text,
                answer=answer,
                solution=str(row[cfg.solution_field]) if cfg.solution_field else answer,
            )
        )
    return items, problems


class DatasetTask:
    stop_strings: tuple[str, ...] = ()

    def __init__(self, cfg: DatasetConfig, rows: list[dict] | None = None, heldout_rows: list[dict] | None = None):
        check(cfg, "task.dataset.")
        if not cfg.path and rows is None:
            raise ValueError("task.dataset.path: a hub name or a local .jsonl/.csv/.parquet file is required")
        self.scorer, self.extract = SCORERS[cfg.scorer]
        self.skipped: list[str] = []  # bad rows skipped, by source and row number
        self.name = f"dataset:{cfg.path}"
        self.seed = cfg.seed
        items = self._items(rows if rows is not None else load_rows(cfg), cfg, cfg.path)
        if cfg.heldout:
            if heldout_rows is None:
                heldout_rows = load_rows(cfg, "heldout")
            heldout = self._items(heldout_rows, cfg, cfg.heldout)[: cfg.heldout_max]
            seen = {str(it.prompt) for it in heldout}
            self._heldout, self._train = heldout, [it for it in items if str(it.prompt) not in seen]
        else:
            random.Random(cfg.seed).shuffle(items)
            n_heldout = max(1, min(cfg.heldout_max, round(len(items) * cfg.heldout_fraction)))
            self._heldout, self._train = items[:n_heldout], items[n_heldout:]

    def _items(self, rows: list[dict], cfg: DatasetConfig, source: str) -> list[Item]:
        items, problems = validate_rows(rows, cfg)
        if problems and cfg.on_bad_row == "error":
            shown = "\n  ".join(problems[:20]) + (
                f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            )
            raise ValueError(
                f"task.dataset {source}: {len(problems)} bad rows (set task.dataset.on_bad_row=skip "
                f"to skip them):\n  {shown}"
            )
        if not items:
            raise ValueError(f"task.dataset {source}: no good rows")
        self.skipped += [f"{source} {p}" for p in problems]
        return items

    def train_item(self, index: int) -> Item:
        """Epoch after epoch, each in its own seeded order."""
        if not self._train:
            raise ValueError(f"task.dataset {self.name}: every row is held out; this task is for evaluation only")
        epoch, offset = divmod(index, len(self._train))
        order = list(range(len(self._train)))
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return self._train[order[offset]]

    def heldout(self) -> list[Item]:
        return self._heldout
