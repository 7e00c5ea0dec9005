"""Served model names that answer with test-time scaling (relayrl/tts): `majority@N` samples N answers and returns
the first that holds the most common final answer (majority vote over relayrl's maths answer extraction; the
first sample when none has an answer); `best_of_n@N` returns the one a trained reward model scores highest
(`relayrl serve --reward-model`). What the choice cost is in `usage`: the N samples as completion tokens, the
reward model's reading as prompt tokens, and `usage.test_time_scaling` says which."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from relayrl.evaluation.metrics import majority_vote
from relayrl.rewards.math_answer import extract_answer
from relayrl.rewards.model_scorer import RewardModelScorer
from relayrl.serving.backend import Update
from relayrl.serving.errors import APIError
from relayrl.serving.generation import Generation, collect
from relayrl.serving.schemas import TestTimeScalingUsage
from relayrl.tts.voting import best_of_n

NAME = re.compile(r"(?P<method>\w+)@(?P<n>\d+)")


@dataclass(frozen=True)
class Scaling:
    method: str  # majority | best_of_n
    n: int
    reward_model: RewardModelScorer | None = None

    def pick(self, texts: list[str], question: str) -> tuple[int, int]:
        """The index of the answer to return, and the tokens the reward model read to choose it."""
        if self.method == "majority":
            winner = majority_vote([extract_answer(t) for t in texts])
            return (0 if winner is None else winner), 0
        scores = [self.reward_model(t, "", question) for t in texts]
        return best_of_n(scores), sum(self.reward_model.tokens(t, question) for t in texts)


def served_names(n: int, reward_model: str | None) -> list[str]:
    return [f"majority@{n}"] + ([f"best_of_n@{n}"] if reward_model else [])


def parse(name: str, max_n: int, reward_model: str | None) -> Scaling | None:
    """The test-time scaling a model name asks for; None for a name without '@' (the served model itself)."""
    if "@" not in name:
        return None
    match = NAME.fullmatch(name)
    methods = "majority@N" + (", best_of_n@N" if reward_model else " (best_of_n@N needs --reward-model)")
    if not match or match["method"] not in (("majority", "best_of_n") if reward_model else ("majority",)):
        raise APIError(
            404, f"model: no model {name!r}; test-time scaling models are {methods}", "model", "model_not_found"
        )
    n = int(match["n"])
    if not 2 <= n <= max_n:
        raise APIError(400, f"model: {name}: N must be from 2 to {max_n} (the server's batch)", "model")
    return Scaling(match["method"], n, RewardModelScorer(reward_model) if match["method"] == "best_of_n" else None)


async def scaled(generation: Generation, scaling: Scaling, questions: list[str]) -> AsyncIterator[Update]:
    """The picked answer to each question (prompt p's candidates are choices p*N .. p*N+N-1), as one update."""
    candidates = list((await collect(generation.updates())).values())
    read = 0
    for p, question in enumerate(questions):
        group = candidates[p * scaling.n : (p + 1) * scaling.n]
        pick, tokens = await asyncio.to_thread(scaling.pick, [c.text for c in group], question)
        read += tokens
        yield Update(p, group[pick].text, group[pick].logprobs, group[pick].finish_reason)
    generation.usage.prompt_tokens += read
    generation.usage.test_time_scaling = TestTimeScalingUsage(
        method=scaling.method, candidates=scaling.n * len(questions), reward_model_tokens=read
    )
