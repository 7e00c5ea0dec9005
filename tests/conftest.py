import pytest


def tiny_overrides(run_dir, **extra) -> list[str]:
    """A training job small enough for the test suite: seconds, not minutes."""
    base = {
        "model.hidden": 32,
        "model.layers": 2,
        "model.heads": 2,
        "sft.steps": 10,
        "sft.batch_size": 16,
        "steps": 6,
        "rollout.prompts_per_step": 4,
        "rollout.samples_per_prompt": 4,
        "rollout.max_new_tokens": 16,
        "eval_every": 3,
        "checkpoint_every": 2,
        "task.arithmetic.heldout_size": 16,
        "task.arithmetic.terms": 2,
        "threads.generator": 1,
        "threads.trainer": 1,
        "run_dir": str(run_dir),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def tiny():
    return tiny_overrides
