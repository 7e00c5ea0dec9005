"""Reward-model losses, Critic-RM critique filtering, and test-time scaling on scripted judges (hand-worked)."""

import math

import pytest
import torch

from relayrl.algorithms.reward_losses import bradley_terry, critic_rm, critic_weight, preference_probability
from relayrl.rewards.critique_filter import Critique, FilterStats, best_critiques
from relayrl.tts.pdr import parallel_distill_refine
from relayrl.tts.tournament import tournament
from relayrl.tts.voting import best_of_n, weighted_majority


def test_bradley_terry_and_critic_rm_losses_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    # -log sigmoid(1) = log(1 + e^-1) = 0.313262; -log sigmoid(-2) = log(1 + e^2) = 2.126928
    bt = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2))) / 2
    # float32 softplus of 2 terms and their mean against doubles: a few roundings (2^-24 each); 1e-6 is ~17
    assert bradley_terry(chosen, rejected).item() == pytest.approx(bt, rel=1e-6)
    assert critic_rm(torch.tensor(2.0), chosen, rejected, 0.25).item() == pytest.approx(0.75 * 2.0 + 0.25 * bt)
    assert [critic_weight(s, 5) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    ("margin", "expected"),
    [
        (0.0, 0.5),
        (2.0, 1 / (1 + math.exp(-2))),
        (-2.0, 1 / (1 + math.exp(2))),
        *[(big, 1.0) for big in (1000.0, 1e30, math.inf)],
        *[(-big, 0.0) for big in (1000.0, 1e30, math.inf)],
    ],
)
def test_preference_probability_is_stable_at_extreme_margins(margin, expected):
    # Python floats (double): a sigmoid is a few roundings of 2^-53 = 1.1e-16 on a value <= 1
    assert preference_probability(margin) == pytest.approx(expected, abs=1e-15)


def test_bradley_terry_is_finite_at_extreme_logits():
    big = torch.tensor([1000.0, 1e30, 1e30])
    assert bradley_terry(big, -big).item() == 0.0  # sure and right: no loss, no overflow
    assert bradley_terry(torch.tensor([-1000.0]), torch.tensor([1000.0])).item() == pytest.approx(2000.0)
    # softplus(x) = x for large x; 2e30 as float32 is 2^-24 relative off, within approx's rel 1e-6
    assert bradley_terry(torch.tensor([-1e30]), torch.tensor([1e30])).item() == pytest.approx(2e30)
    assert bradley_terry(torch.tensor([math.inf]), torch.tensor([0.0])).item() == 0.0
    assert bradley_terry(torch.tensor([-math.inf]), torch.tensor([0.0])).item() == math.inf  # certain and wrong


def test_critique_filter_keeps_the_most_decided_agreeing_critique():
    stats = FilterStats()
    chosen = [Critique("good", 8), Critique("meh", 4), Critique("very good", 9), Critique("very fine", 9)]
    rejected = [Critique("bad", 3), Critique("nice?", 8), Critique("poor", 4)]
    # chosen mean 7.5, rejected mean 5: "meh" (4 <= 5) and "nice?" (8 >= 7.5) contradict the label
    kept = best_critiques(chosen, rejected, stats)
    assert kept == (Critique("very good", 9), Critique("bad", 3))  # 9: the furthest above 5, shorter of the two
    assert (stats.pairs, stats.kept, stats.critiques, stats.contradicting) == (1, 1, 7, 2)
    assert best_critiques([Critique("wrong way", 2)], [Critique("x", 5)], stats) is None  # no agreeing critique
    assert best_critiques([], [Critique("x", 5)], stats) is None
    assert (stats.pairs, stats.kept) == (3, 1)


def _bigger(a: str, b: str, vote: int) -> tuple[int | None, int]:
    return (0 if int(a) >= int(b) else 1), 10


def test_tournament_brackets_with_byes_and_vote_counts():
    result = tournament(["1", "5", "3", "4", "2"], _bigger, votes=3)
    assert result.rounds == [[(0, 1, 1), (2, 3, 3)], [(1, 3, 1)], [(1, 4, 1)]]  # "2" has byes until the final
    assert result.winner == 1
    assert (result.judge_calls, result.judge_tokens) == (12, 120)
    assert tournament(["7"], _bigger).judge_calls == 0
    with pytest.raises(ValueError):
        tournament([], _bigger)


def test_tournament_ties_go_to_the_earlier_candidate_and_unparsed_votes_are_counted():
    split = tournament(["a", "b"], lambda a, b, v: (v % 2, 1), votes=2)  # one vote each
    assert split.winner == 0
    unparsed = tournament(["a", "b", "c"], lambda a, b, v: (None, 1), votes=3)
    assert unparsed.winner == 0 and unparsed.unparsed_votes == 6
    # split verdicts (a judge asked both ways that disagreed with itself) count as fractions of a vote
    assert tournament(["a", "b"], lambda a, b, v: (0.5, 1), votes=3).winner == 0  # 1.5 to 1.5: a tie
    assert tournament(["a", "b"], lambda a, b, v: ((0.5, 1.0, 0.5)[v], 1), votes=3).winner == 1  # 1 to 2


def test_pdr_distills_the_top_attempts_into_the_next_round():
    seen_contexts = []

    def generate(question, context, n):
        seen_contexts.append(context)
        base = max((int(c) for c in context), default=0)
        return [(str(base + i), 5) for i in range(n)]  # attempts improve on the best context

    result = parallel_distill_refine(
        "q", generate, lambda q, attempts: ([float(a) for a in attempts], 1), _bigger, width=3, keep=2, rounds=3
    )
    assert result.rounds == [["0", "1", "2"], ["2", "3", "4"], ["4", "5", "6"]]
    assert result.contexts == [["2", "1"], ["4", "3"]]
    assert seen_contexts == [[], ["2", "1"], ["4", "3"]]
    assert result.answer == "6"
    assert result.generated_tokens == 45
    assert result.judge_tokens == 2 + 20  # ranking rounds 0 and 1; 3 candidates: a match and a bye, then the final


def test_best_of_n_and_weighted_majority():
    assert best_of_n([0.1, 0.9, 0.9, 0.3]) == 1
    assert weighted_majority(["4", "5", "5", None, "4"], [1, 1, 1, 5, 1]) == 0  # a tie: the answer seen first
    assert weighted_majority(["4", "5", "5"], [3.0, 1.0, 1.0]) == 0
    assert weighted_majority(["4", "5", "5"], [1.0, 1.0, 1.0]) == 1
    assert weighted_majority([None], [1.0]) is None
