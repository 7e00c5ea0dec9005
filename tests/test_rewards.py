import time

from relayrl.rewards.verifier import RewardConfig, VerifierScorer
from relayrl.rollout import Rollout
from relayrl.tasks.arithmetic import score_arithmetic


def hostile_scorer(completion: str, answer: str) -> float:
    if completion == "raise":
        raise RuntimeError("scorer bug")
    if completion == "hang":
        time.sleep(60)
    return score_arithmetic(completion, answer)


def _rollout(text: str, answer: str = "7") -> Rollout:
    return Rollout(0, 0, [1], [2], [0.0], 0, text, "stop", answer=answer)


def test_failures_are_marked_counted_and_do_not_block():
    scorer = VerifierScorer(hostile_scorer, RewardConfig(timeout=1.0, workers=2, failure_reward=-1.0))
    try:
        rollouts = [_rollout("#7"), _rollout("raise"), _rollout("hang"), _rollout("#8"), _rollout("#7")]
        start = time.perf_counter()
        stats = scorer.score(rollouts)
        assert time.perf_counter() - start < 10
        assert [r.reward for r in rollouts] == [1.0, -1.0, -1.0, 0.0, 1.0]
        assert [r.reward_failed for r in rollouts] == [False, True, True, False, False]
        assert stats == {"reward_timeouts": 1.0, "reward_errors": 1.0}
        # the pool recovered from the killed worker
        again = [_rollout("#7")]
        scorer.score(again)
        assert again[0].reward == 1.0
    finally:
        scorer.close()


def test_arithmetic_scorer_reads_the_first_answer_marker():
    assert score_arithmetic("3+4=7\n#7", "7") == 1.0
    assert score_arithmetic("#-26", "-26") == 1.0
    assert score_arithmetic("#70", "7") == 0.0
    assert score_arithmetic("no answer", "7") == 0.0
