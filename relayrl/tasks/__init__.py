"""Tasks: prompts, reference answers and how to score them."""

from relayrl.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from relayrl.tasks.base import Item, Scorer, Task
from relayrl.tasks.dataset import DatasetConfig, DatasetTask
from relayrl.tasks.expression import ExpressionConfig, ExpressionTask
from relayrl.tasks.humaneval import HumanEvalConfig, HumanEvalTask
from relayrl.tasks.reasoning_gym import ReasoningGymConfig, ReasoningGymTask

__all__ = [
    "ArithmeticConfig",
    "ArithmeticTask",
    "DatasetConfig",
    "DatasetTask",
    "ExpressionConfig",
    "ExpressionTask",
    "HumanEvalConfig",
    "HumanEvalTask",
    "Item",
    "ReasoningGymConfig",
    "ReasoningGymTask",
    "Scorer",
    "Task",
    "make_task",
]

TASKS = {  # task.name -> the task class, built from the TaskConfig section of the same name
    "arithmetic": ArithmeticTask,
    "dataset": DatasetTask,
    "reasoning_gym": ReasoningGymTask,
    "expression": ExpressionTask,
    "humaneval": HumanEvalTask,
}


def make_task(name: str, sections) -> Task:
    """The task `name`, from its section of `sections` (a TaskConfig)."""
    if name not in TASKS:
        raise ValueError(f"task.name: unknown task {name!r}; available: {', '.join(map(repr, TASKS))}")
    return TASKS[name](getattr(sections, name))
