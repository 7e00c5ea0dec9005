"""Best-of-N and weighted majority over extracted answers."""

from __future__ import annotations

from collections import defaultdict


def best_of_n(scores: list[float]) -> int:
    """Index of the highest-scored candidate (verifier, reward model or judge); the first on a tie."""
    if not scores:
        raise ValueError("best_of_n: no candidates")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def weighted_majority(answers: list[str | None], weights: list[float]) -> int | None:
    """Index of the first candidate holding the answer with the largest total weight (majority vote when all
    weights are 1); candidates with no answer do not vote; the answer seen first wins a tie."""
    totals: dict[str, float] = defaultdict(float)
    for a, w in zip(answers, weights, strict=True):
        if a is not None:
            totals[a] += w
    if not totals:
        return None
    top = max(totals.values())
    return next(i for i, a in enumerate(answers) if a is not None and totals[a] == top)
