"""Recursive Tournament Voting: candidates meet in pairs, a judge votes V times on each, winners advance.

Brackets are made in candidate order; with an odd count the last candidate has a bye to the next round.
A match goes to the candidate with more votes; on a tie (V even, a judge that abstains, or one that judged
both orders and disagreed with itself) to the one seeded first (the earlier candidate), so the result is
deterministic for a deterministic judge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Judge = Callable[[str, str, int], tuple[float | None, int]]
"""(candidate a, candidate b, vote index) -> (0 if a is better, 1 if b, a fraction for a split verdict (0.5: a
tie), None if the verdict did not parse; tokens the judge spent)."""


@dataclass
class TournamentResult:
    winner: int  # index into the candidates
    rounds: list[list[tuple[int, int, int]]] = field(default_factory=list)  # per round: (a, b, winner)
    judge_calls: int = 0
    judge_tokens: int = 0
    unparsed_votes: int = 0


def tournament(candidates: list[str], judge: Judge, votes: int = 1) -> TournamentResult:
    if not candidates:
        raise ValueError("tournament: no candidates")
    result = TournamentResult(winner=0)
    alive = list(range(len(candidates)))
    while len(alive) > 1:
        matches, advancing = [], []
        for a, b in zip(alive[0::2], alive[1::2], strict=False):
            tally = [0.0, 0.0]
            for v in range(votes):
                verdict, tokens = judge(candidates[a], candidates[b], v)
                result.judge_calls += 1
                result.judge_tokens += tokens
                if verdict is None:
                    result.unparsed_votes += 1
                else:
                    tally[0] += 1 - verdict
                    tally[1] += verdict
            winner = b if tally[1] > tally[0] else a
            matches.append((a, b, winner))
            advancing.append(winner)
        if len(alive) % 2:
            advancing.append(alive[-1])  # a bye
        result.rounds.append(matches)
        alive = advancing
    result.winner = alive[0]
    return result
