"""A task from a dataset: a Hugging Face hub name, or local JSONL / CSV / parquet files.

Each row needs a question and a reference answer (the field names are configurable).
Bad rows are reported by row number and either rejected (the default) or skipped.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from relayrl.tasks.base import Item

NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class DatasetConfig:
    path: str = ""  # hub name (org/name) or a local file
    subset: str = ""  # hub config name, e.g. "main" for gsm8k
    split: str = "train"
    question_field: str = "question"
    answer_field: str = "answer"
    template: str = "{question}\n"  # the prompt; {question} is replaced
    heldout_fraction: float = 0.1
    heldout_max: int = 256
    on_bad_row: str = "error"  # error | skip
    seed: int = 0


def final_answer(text: str) -> str:
    """The text after the last '#' marker ('#### 42' in GSM8K), else the last number."""
    if "#" in text:
        return text.rsplit("#", 1)[1].strip().replace(",", "")
    numbers = NUMBER_RE.findall(text)
    return numbers[-1].replace(",", "") if numbers else ""


def score_final_answer(completion: str, answer: str) -> float:
    return float(final_answer(completion) == final_answer(answer) != "")


def load_rows(cfg: DatasetConfig) -> list[dict]:
    from pathlib import Path

    import datasets

    suffix = Path(cfg.path).suffix
    if suffix in LOCAL_FORMATS:
        if not Path(cfg.path).exists():
            raise FileNotFoundError(f"task.dataset.path: no such file {cfg.path}")
        ds = datasets.load_dataset(LOCAL_FORMATS[suffix], data_files=cfg.path, split="train")
    else:
        ds = datasets.load_dataset(cfg.path, cfg.subset or None, split=cfg.split)
    return list(ds)


def validate_rows(rows: list[dict], cfg: DatasetConfig) -> tuple[list[Item], list[str]]:
    """Items from the good rows, and one message per bad row (row numbers count from 1)."""
    items, problems = [], []
    for number, row in enumerate(rows, start=1):
        bad = [
            f"field {f!r} is {'missing' if row.get(f) is None else 'empty'}"
            for f in (cfg.question_field, cfg.answer_field)
            if row.get(f) is None or not str(row[f]).strip()
        ]
        if bad:
            problems.append(f"row {number}: " + "; ".join(bad))
            continue
        question, answer = str(row[cfg.question_field]), str(row[cfg.answer_field])
        items.append(Item(prompt=cfg.template.format(question=question), answer=answer, solution=answer))
    return items, problems


class DatasetTask:
    stop_strings: tuple[str, ...] = ()
    scorer = staticmethod(score_final_answer)

    def __init__(self, cfg: DatasetConfig, rows: list[dict] | None = None):
        if cfg.on_bad_row not in ("error", "skip"):
            raise ValueError(f"task.dataset.on_bad_row must be 'error' or 'skip', got {cfg.on_bad_row!r}")
        if not cfg.path and rows is None:
            raise ValueError("task.dataset.path: a hub name or a local .jsonl/.csv/.parquet file is required")
        items, problems = validate_rows(load_rows(cfg) if rows is None else rows, cfg)
        if problems and cfg.on_bad_row == "error":
            shown = "\n  ".join(problems[:20]) + (
                f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            )
            raise ValueError(
                f"task.dataset {cfg.path}: {len(problems)} bad rows (set task.dataset.on_bad_row=skip "
                f"to skip them):\n  {shown}"
            )
        if len(items) < 2:
            raise ValueError(f"task.dataset {cfg.path}: needs at least 2 good rows, has {len(items)}")
        self.skipped = problems
        random.Random(cfg.seed).shuffle(items)
        n_heldout = max(1, min(cfg.heldout_max, int(len(items) * cfg.heldout_fraction)))
        self._heldout, self._train = items[:n_heldout], items[n_heldout:]
        self.name = f"dataset:{cfg.path}"

    def train_item(self, index: int) -> Item:
        """Epoch after epoch, each in its own seeded order."""
        epoch, offset = divmod(index, len(self._train))
        order = list(range(len(self._train)))
        random.Random(f"{epoch}").shuffle(order)
        return self._train[order[offset]]

    def heldout(self) -> list[Item]:
        return self._heldout
