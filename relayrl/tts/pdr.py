"""Parallel-Distill-Refine: attempts in parallel, the best few distilled into the context of the next round.

Round 0 samples `width` attempts at the question. Each later round ranks the previous round's attempts,
puts the top `keep` into the prompt as context, and samples `width` new attempts. After `rounds` rounds a
tournament over the last round's attempts picks the answer. Every generated and judged token is counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from relayrl.tts.tournament import Judge, tournament

Generate = Callable[[str, list[str], int], list[tuple[str, int]]]
"""(question, context attempts, n) -> n (attempt, tokens spent) pairs."""
Rank = Callable[[str, list[str]], tuple[list[float], int]]
"""(question, attempts) -> (a score per attempt, higher is better; tokens the ranking spent)."""


@dataclass
class PDRResult:
    answer: str
    rounds: list[list[str]] = field(default_factory=list)  # every round's attempts
    contexts: list[list[str]] = field(default_factory=list)  # the context each round after the first was given
    generated_tokens: int = 0
    judge_tokens: int = 0  # ranking the rounds and the final tournament


def parallel_distill_refine(
    question: str, generate: Generate, rank: Rank, judge: Judge, width: int, keep: int, rounds: int, votes: int = 1
) -> PDRResult:
    if width < 1 or keep < 1 or rounds < 1:
        raise ValueError("pdr: width, keep and rounds must be >= 1")
    result, context = PDRResult(answer=""), []
    for r in range(rounds):
        if r:
            scores, tokens = rank(question, result.rounds[-1])
            result.judge_tokens += tokens
            order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
            context = [result.rounds[-1][i] for i in order[:keep]]
            result.contexts.append(context)
        attempts = generate(question, context, width)
        result.generated_tokens += sum(t for _, t in attempts)
        result.rounds.append([a for a, _ in attempts])
    final = tournament(result.rounds[-1], judge, votes)
    result.judge_tokens += final.judge_tokens
    result.answer = result.rounds[-1][final.winner]
    return result
