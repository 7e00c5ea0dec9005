"""Critic-RM stage 1: keep, for each preference pair, the critiques that agree with its label, the best of them.

Each response of a pair gets several sampled critiques, each ending in a score. A critique of the chosen
response agrees with the label if its score is above the mean score the rejected response's critiques gave;
a critique of the rejected response if its score is below the chosen response's mean. Of the agreeing ones,
the quality rule keeps the one furthest from the other side's mean (the most decided), the shorter on a tie.
A pair with no agreeing critique on a side is dropped.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass
class Critique:
    text: str
    score: float  # the score the critique ends with; None-parsed critiques are left out before this step


@dataclass
class FilterStats:
    pairs: int = 0
    kept: int = 0
    critiques: int = 0
    contradicting: int = 0
    unparsed: int = 0  # critiques without a score, left out before the filter (counted by whoever parses them)


def best_critiques(
    chosen: list[Critique], rejected: list[Critique], stats: FilterStats | None = None
) -> tuple[Critique, Critique] | None:
    """The kept (chosen, rejected) critiques of one pair, or None when a side has none that agrees."""
    stats = stats if stats is not None else FilterStats()
    stats.pairs += 1
    stats.critiques += len(chosen) + len(rejected)
    if not chosen or not rejected:
        return None
    chosen_mean = statistics.fmean(c.score for c in chosen)
    rejected_mean = statistics.fmean(c.score for c in rejected)
    good = [c for c in chosen if c.score > rejected_mean]
    bad = [c for c in rejected if c.score < chosen_mean]
    stats.contradicting += len(chosen) - len(good) + len(rejected) - len(bad)
    if not good or not bad:
        return None
    stats.kept += 1
    return (
        min(good, key=lambda c: (-(c.score - rejected_mean), len(c.text))),
        min(bad, key=lambda c: (-(chosen_mean - c.score), len(c.text))),
    )
