"""Tasks: prompts, reference answers and how to score them."""

from relayrl.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from relayrl.tasks.base import Item, Scorer, Task

__all__ = ["ArithmeticConfig", "ArithmeticTask", "Item", "Scorer", "Task", "make_task"]


def make_task(name: str, arithmetic: ArithmeticConfig) -> Task:
    if name == "arithmetic":
        return ArithmeticTask(arithmetic)
    raise ValueError(f"task.name: unknown task {name!r}; available: 'arithmetic'")
