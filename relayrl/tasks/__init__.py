"""Tasks: prompts, reference answers and how to score them."""

from relayrl.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from relayrl.tasks.base import Item, Scorer, Task
from relayrl.tasks.dataset import DatasetConfig, DatasetTask
from relayrl.tasks.reasoning_gym import ReasoningGymConfig, ReasoningGymTask

__all__ = [
    "ArithmeticConfig",
    "ArithmeticTask",
    "DatasetConfig",
    "DatasetTask",
    "Item",
    "ReasoningGymConfig",
    "ReasoningGymTask",
    "Scorer",
    "Task",
    "make_task",
]


def make_task(
    name: str, arithmetic: ArithmeticConfig, dataset: DatasetConfig, reasoning_gym: ReasoningGymConfig
) -> Task:
    if name == "arithmetic":
        return ArithmeticTask(arithmetic)
    if name == "dataset":
        return DatasetTask(dataset)
    if name == "reasoning_gym":
        return ReasoningGymTask(reasoning_gym)
    raise ValueError(f"task.name: unknown task {name!r}; available: 'arithmetic', 'dataset', 'reasoning_gym'")
