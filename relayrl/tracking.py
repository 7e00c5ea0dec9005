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


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class Tracker:
    def __init__(self, run_dir: Path, start_step: int, total_steps: int, show: bool = True):
        self.path = run_dir / "metrics.jsonl"
        # a resumed run recomputes everything after its checkpoint: drop those records
        kept = [r for r in read_jsonl(self.path) if r["step"] <= start_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
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

    def log(self, step: int, metrics: dict) -> None:
        record = {"step": step, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in metrics.items():
            if isinstance(v, int | float):
                self.tb.add_scalar(k, v, step)
        self.last.update(metrics)
        info = "  ".join(fmt.format(self.last[k]) for k, fmt in SHOWN if k in self.last)
        self.progress.update(self.task, completed=step, info=info)

    def close(self) -> None:
        self.progress.stop()
        self.tb.close()
