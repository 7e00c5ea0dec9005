import math

import pytest

from relayrl.evaluation.metrics import majority_vote, mean_interval, pass_at_k, wilson_interval


@pytest.mark.parametrize(("n", "c", "k"), [(10, 3, 1), (10, 3, 5), (8, 0, 4), (8, 8, 8), (20, 7, 10), (5, 4, 2)])
def test_pass_at_k_closed_form(n, c, k):
    # Python floats (double) both sides, a few roundings each: isclose's rel_tol 1e-9 is ~1e7 of them
    assert math.isclose(pass_at_k(n, c, k), 1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_1_is_fraction_correct():
    assert math.isclose(pass_at_k(10, 3, 1), 0.3)


def test_wilson_interval_contains_estimate():
    lo, hi = wilson_interval(30, 100)
    assert lo < 0.3 < hi
    # the references are quoted to 4 decimals (0.218948, 0.395850): 1e-4 holds their rounding (<= 5e-5)
    assert math.isclose(lo, 0.2189, abs_tol=1e-4) and math.isclose(hi, 0.3958, abs_tol=1e-4)


def test_majority_vote_ties_go_to_the_first_answer_and_none_abstains():
    assert majority_vote(["3", "5", "5", "3", None, None, None]) == 0  # 3 and 5 tie at two: 3 came first
    assert majority_vote([None, "7", "4", "4"]) == 2
    assert majority_vote([None, None]) is None


def test_mean_interval_hand_computed():
    lo, hi = mean_interval([1.0, 0.0, 1.0, 1.0])  # mean 0.75, sample std 0.5, se 0.25
    assert math.isclose(lo, 0.75 - 1.96 * 0.25) and hi == 1.0  # double arithmetic; hi clamped to exactly 1


def test_paired_gain_hand_computed():
    from relayrl.evaluation import compare
    from relayrl.evaluation.evaluate import EvalResult

    def result(correct: list[float]) -> EvalResult:
        return EvalResult(sum(correct) / len(correct), (0.0, 1.0), [{"greedy_correct": c} for c in correct])

    before, after = result([1, 0, 1, 0]), result([1, 1, 1, 0])
    gain = compare.paired_gain(after, before)  # differences 0, 1, 0, 0: mean 0.25, sample std 0.5, se 0.25
    assert gain["value"] == 0.25  # exact: 1 / 4
    # double arithmetic (sqrt, a few products): pytest.approx's rel 1e-6 is ~1e10 roundings
    assert gain["ci95"] == pytest.approx((0.25 - 1.96 * 0.25, 0.25 + 1.96 * 0.25))
    rows = [compare.summary("a", "t", before), compare.summary("b", "t", after, before)]
    assert "+25.0% (-24.0% to +74.0%)" in compare.table(rows).splitlines()[-1]
    assert compare.table(rows).splitlines()[2].endswith("| - |")  # the first model has no gain over itself
