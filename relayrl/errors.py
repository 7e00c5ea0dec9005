"""Errors that end a run for a reason the user can act on: the CLI prints them as one line, no traceback."""


class TrainingError(RuntimeError):
    """A run cannot go on: a reward function returned NaN, steps keep going non-finite, weights went bad."""


class NonFiniteTraining(TrainingError):
    pass


def nonfinite_streak(skipped: bool, in_a_row: int, limit: int, where: str) -> int:
    """How many steps in a row were skipped for a non-finite loss or gradient, this one included; the run stops
    at `limit`. Its checkpoints are deterministic, so resuming would repeat the same steps: the message says so."""
    if not skipped:
        return 0
    print(f"{where}: non-finite loss or gradient; update skipped")
    if in_a_row + 1 >= limit:
        raise NonFiniteTraining(
            f"{where}: {limit} steps in a row had a non-finite loss or gradient (optim.max_nonfinite_steps); resuming"
            " would repeat them: start a new run with a lower learning rate or a reward function that is finite"
        )
    return in_a_row + 1
