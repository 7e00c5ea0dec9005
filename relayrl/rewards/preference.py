"""Pairwise preference data (prompt, chosen, rejected): a hub dataset, local files, or a built-in synthetic set.

Rows are validated one by one: a missing or empty field, or a chosen response identical to the rejected one,
is reported by row number, and the row rejected (the default) or skipped. `relayrl:arithmetic` makes pairs from
the embedded arithmetic task, quality checkable by a program: the chosen response is the worked solution, the
rejected one the same solution with a wrong final answer; `arithmetic_critique` writes what a careful checker
would say of any response to them (Critic-RM's warm-up data).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from relayrl.tasks.arithmetic import ArithmeticConfig, ArithmeticTask, extract_arithmetic, worked_steps
from relayrl.tasks.dataset import load_rows


@dataclass
class PreferenceConfig:
    path: str = "relayrl:arithmetic"  # hub name, local .jsonl/.csv/.parquet, or relayrl:arithmetic
    subset: str = ""
    split: str = "train"
    heldout: str = ""  # a split or file; empty: carve heldout_fraction of the rows
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    heldout_fraction: float = 0.1
    heldout_max: int = 512
    on_bad_row: str = "error"  # error | skip
    synthetic_rows: int = 4096  # relayrl:arithmetic: pairs to make
    seed: int = 0


@dataclass
class Pair:
    prompt: str
    chosen: str
    rejected: str


def arithmetic_pairs(n: int, seed: int, cfg: ArithmeticConfig | None = None) -> list[dict]:
    task, rng = ArithmeticTask(cfg or ArithmeticConfig(heldout_size=1)), random.Random(seed)
    rows = []
    for i in range(n):
        item = task.train_item(i)
        wrong = int(item.answer) + rng.choice([-1, 1]) * rng.randint(1, 9)
        rejected = item.solution.rsplit("#", 1)[0] + f"#{wrong}"
        rows.append({"prompt": item.prompt, "chosen": item.solution, "rejected": rejected})
    return rows


def arithmetic_critique(prompt: str, response: str) -> str:
    """A critique of a response to a `relayrl:arithmetic` prompt: the steps worked out from the question, the
    response's final answer, a verdict and a score, e.g. ` 3+4=7, 7-2=5; the response says 6: wrong. Score: 2`."""
    steps, value = worked_steps(prompt.removeprefix("Q:").split("\n", 1)[0])
    said = extract_arithmetic(response)
    verdict = "right. Score: 8" if said == str(value) else "wrong. Score: 2"
    return f" {', '.join(steps)}; the response says {said or 'nothing'}: {verdict}"


def validate_pairs(rows: list[dict], cfg: PreferenceConfig, source: str) -> tuple[list[Pair], list[str]]:
    pairs, problems = [], []
    fields = (cfg.prompt_field, cfg.chosen_field, cfg.rejected_field)
    for number, row in enumerate(rows, start=1):
        bad = [f"field {f!r} is {'missing' if row.get(f) is None else 'empty'}" for f in fields if not _text(row, f)]
        if not bad and _text(row, cfg.chosen_field) == _text(row, cfg.rejected_field):
            bad = ["chosen and rejected are identical"]
        if bad:
            problems.append(f"{source} row {number}: " + "; ".join(bad))
        else:
            pairs.append(Pair(*(str(row[f]) for f in fields)))
    if problems and cfg.on_bad_row == "error":
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError("preference data: " + "; ".join(problems[:5]) + more + "; set data.on_bad_row=skip to skip")
    return pairs, problems


def _text(row: dict, field: str) -> str:
    return str(row.get(field) or "").strip()


def load_pairs(cfg: PreferenceConfig) -> tuple[list[Pair], list[Pair], list[str]]:
    """(training pairs, held-out pairs, bad rows skipped)."""
    if cfg.on_bad_row not in ("error", "skip"):
        raise ValueError(f"data.on_bad_row must be 'error' or 'skip', got {cfg.on_bad_row!r}")
    synthetic = cfg.path == "relayrl:arithmetic"
    rows = arithmetic_pairs(cfg.synthetic_rows, cfg.seed) if synthetic else load_rows(cfg)  # as dataset tasks
    pairs, skipped = validate_pairs(rows, cfg, cfg.path)
    if cfg.heldout:
        heldout, more = validate_pairs(load_rows(cfg, "heldout"), cfg, cfg.heldout)
        return pairs, heldout[: cfg.heldout_max], skipped + more
    random.Random(cfg.seed).shuffle(pairs)
    n = max(1, min(cfg.heldout_max, round(len(pairs) * cfg.heldout_fraction)))
    return pairs[n:], pairs[:n], skipped
