"""Tasks: prompts, reference answers and how to score them."""

from relayrl.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from relayrl.tasks.base import Item, Scorer, Task
from relayrl.tasks.dataset import DatasetConfig, DatasetTask

__all__ = ["ArithmeticConfig", "ArithmeticTask", "DatasetConfig", "DatasetTask", "Item", "Scorer", "Task", "make_task"]


def make_task(name: str, arithmetic: ArithmeticConfig, dataset: DatasetConfig) -> Task:
    if name == "arithmetic":
        return ArithmeticTask(arithmetic)
    if name == "dataset":
        return DatasetTask(dataset)
    raise ValueError(f"task.name: unknown task {name!r}; available: 'arithmetic', 'dataset'")
