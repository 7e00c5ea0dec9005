"""Where metrics go: JSONL (the record), TensorBoard (the curves), a rich progress bar (the view)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.tensorboard import SummaryWriter

SHOWN = [
    ("reward", "reward {:.3f}"),
    ("heldout_accuracy", "acc {:.1%}"),
    ("staleness", "stale {:.1f}"),
    ("tokens_per_second", "{:.0f} tok/s"),
    ("gen_share", "gen {:.0%}"),
]

# the fields of a step's record that measure wall-clock time: a resumed run reproduces every other field
WALL_CLOCK = frozenset(
    {
        "gen_seconds",
        "wait_seconds",
        "train_seconds",
        "score_seconds",
        "step_seconds",
        "tokens_per_second",
        "gen_share",
        "sync_seconds",
        "sync_share",
    }
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def restore(path: Path, step: int, replay: list[dict]) -> None:
    """metrics.jsonl as of the checkpoint of `step`: the records before `replay` (the checkpoint's own, since the
    previous one) as the file has them, then `replay`; a resumed run recomputes everything after."""
    first = replay[0]["step"] if replay else step + 1
    lines = path.read_text().splitlines() if path.exists() else []
    if lines and not _parses(lines[-1]):  # cut short by the kill: it was after the checkpoint anyway
        lines.pop()
    kept = [r for r in map(json.loads, filter(str.strip, lines)) if r["step"] < first]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in [*kept, *replay]))
    tmp.replace(path)


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


class Tracker:
    def __init__(self, run_dir: Path, start_step: int, total_steps: int, replay: list[dict], show: bool = True):
        self.path = run_dir / "metrics.jsonl"
        restore(self.path, start_step, replay)
        self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 - len(replay))
        for record in replay:
            self._scalars(record)
        self.progress = Progress(
            TextColumn("[bold]RL"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            disable=not show,
        )
        self.task = self.progress.add_task("rl", total=total_steps, completed=start_step, info="")
        self.last: dict = {}
        self.progress.start()

    def log(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self._scalars(record)
        self.last.update(record)
        info = "  ".join(fmt.format(self.last[k]) for k, fmt in SHOWN if k in self.last)
        self.progress.update(self.task, completed=record["step"], info=info)

    def _scalars(self, record: dict) -> None:
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float):
                self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.progress.stop()
        self.tb.close()
