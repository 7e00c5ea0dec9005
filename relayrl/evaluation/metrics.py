"""Pass@k, majority vote, confidence intervals, and SPOC's self-correction metrics."""

from __future__ import annotations

import itertools
import math
from collections import Counter


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021): 1 - C(n-c,k)/C(n,k)."""
    if k > n:
        raise ValueError(f"pass@k needs k <= n samples; got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def majority_vote(answers: list[str | None]) -> int | None:
    """Index of the first sample holding the most common extracted answer; ties go to the answer seen first.

    Samples with no answer (None) do not vote; None if no sample has one.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(i for i, a in enumerate(answers) if a is not None and counts[a] == top)


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(
    values: list[float], z: float = 1.96, bounds: tuple[float, float] = (0.0, 1.0)
) -> tuple[float, float]:
    """95% normal interval for the mean of per-item scores in `bounds` (pass@k, sampled pass@1, maj@k in [0, 1];
    paired differences of two models' scores in [-1, 1])."""
    n = len(values)
    if n < 2:
        return bounds
    mean = sum(values) / n
    half = z * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return (max(bounds[0], mean - half), min(bounds[1], mean + half))


def spoc_metrics(completions: list[list[tuple[str, float]]]) -> dict[str, float | None]:
    """SPOC's metrics from each completion's (role, reward) messages (see rewards/spoc.py).

    final/first accuracy: the last/first solution is right. Verification TPR: Yes after a right solution;
    TNR: No after a wrong one. turns: solutions per completion. wrong_to_right: of completions whose first
    solution is wrong, the share that end right; right_to_wrong the reverse. None where nothing was counted.
    """

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    first, final, after_right, after_wrong, turns = [], [], [], [], []
    for messages in completions:
        solutions = [r for role, r in messages if role == "solution"]
        first.append(solutions[0])
        final.append(solutions[-1])
        turns.append(len(solutions))
        for (role, reward), (next_role, next_reward) in itertools.pairwise(messages):
            if role == "solution" and next_role == "verification":
                (after_right if reward >= 1.0 else after_wrong).append(next_reward)
    return {
        "final_accuracy": mean(final),
        "first_accuracy": mean(first),
        "verification_tpr": mean(after_right),
        "verification_tnr": mean(after_wrong),
        "turns": mean([float(t) for t in turns]),
        "wrong_to_right": mean([b for a, b in zip(first, final, strict=True) if a < 1.0]),
        "right_to_wrong": mean([1.0 - b for a, b in zip(first, final, strict=True) if a >= 1.0]),
    }
