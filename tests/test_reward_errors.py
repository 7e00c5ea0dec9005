import math
from dataclasses import dataclass

import pytest

from relayrl.rewards.verifier import RewardConfig, RewardError, VerifierScorer, assign_result
from relayrl.rollout import Message, Rollout


def buggy_scorer(completion: str, answer: str) -> float | list[float]:
    """Module-level, so the spawned reward worker can import it."""
    if completion == "raise":
        raise RuntimeError("an ordinary scorer failure")
    return {"nan": math.nan, "inf": math.inf}.get(completion, 1.0)


@dataclass
class BuggyJudge:
    def __call__(self, completion: str, answer: str) -> list[float]:
        return [1.0, -math.inf]


def _rollout(text: str) -> Rollout:
    return Rollout(3, 1, [1], [2, 3], [0.0, 0.0], 0, text, "stop", answer="7")


def test_a_non_finite_reward_stops_scoring_and_names_the_function():
    scorer = VerifierScorer(buggy_scorer, RewardConfig(timeout=30.0))
    try:
        ok = [_rollout("fine"), _rollout("raise")]
        assert scorer.score(ok) == {"reward_timeouts": 0.0, "reward_errors": 1.0}  # raising stays a counted failure
        for value in ("nan", "inf"):
            with pytest.raises(RewardError, match=rf"test_reward_errors\.buggy_scorer returned {value}.*prompt 3"):
                scorer.score([_rollout("fine"), _rollout(value)])
    finally:
        scorer.close()


def test_a_non_finite_message_reward_names_the_callable_class():
    r = _rollout("x")
    r.messages = [Message(0, 1), Message(1, 2, "verification")]
    with pytest.raises(RewardError, match=r"test_reward_errors\.BuggyJudge returned -inf"):
        assign_result(r, BuggyJudge()(r.text, r.answer), BuggyJudge())
    assert r.reward is None and all(m.reward is None for m in r.messages)  # nothing half-assigned
    with pytest.raises(ValueError, match="3 rewards for 2 messages"):  # a wrong count: the counted kind
        assign_result(r, [1.0, 0.0, 1.0], BuggyJudge())
