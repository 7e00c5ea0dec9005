"""Errors that end a run for a reason the user can act on: the CLI prints them as one line, no traceback."""


class TrainingError(RuntimeError):
    """A run cannot go on: a reward function returned NaN, steps keep going non-finite, weights went bad."""
