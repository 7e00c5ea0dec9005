import os
import random
import signal
import threading
import time

import pytest

from relayrl.rewards import math_answer as ma
from relayrl.rewards.math_answer import MathChecker, equivalent, extract_answer, math_scorer, reference_answer

TIMEOUT = 0.5
SLACK = 1.0  # fork, pipes and a loaded 2-core machine; the helper's own backstop is timeout + 1 s


def _hang(pred: str, ref: str) -> bool:
    """Injected into the helper as the check: a pure-Python hang."""
    while True:
        pass


@pytest.fixture(scope="module")
def checker():
    """A short-timeout checker, installed as the process default so math_scorer uses it."""
    c = MathChecker(timeout=TIMEOUT)
    c.start()
    old, ma._default = ma._default, c
    yield c
    ma._default = old
    c.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{\frac{\sqrt{3}}{2}}$.", r"\frac{\sqrt{3}}{2}"),
        (r"first \boxed{1}, then \fbox{2}, finally \boxed{ 3 }", "3"),
        (r"\boxed{\{1,2\}} is the set", r"\{1,2\}"),
        (r"\boxed{x^{2}+\left(\frac{1}{2}\right)}.", r"x^{2}+\left(\frac{1}{2}\right)"),
        (r"\boxed{42} then an unclosed \boxed{7", "42"),
        (r"\boxed 5", "5"),
        ("The answer is $\\frac{1}{2}$.", r"\frac{1}{2}"),
        ("The final answer is $18.", "18"),
        ("Final Answer: The final answer is $5$. I hope it is correct.", "5"),
        ("**Final Answer:** 12", "12"),
        ("the answer is 42 apples.", "42"),
        ("2+2=4\nThe answer is 4. Then 5 more words.", "4"),
        ("48/2 = 24\n#### 1,234", "1,234"),
        ("he had 3 and owes -12.5", "-12.5"),
        ("a total of 1,234,567 people", "1,234,567"),
        ("he ate 3/4 of it", "3/4"),
        ("x-3", "3"),
        ("it costs 0.75.", "0.75"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_overlong_answers_are_absent():
    assert extract_answer("\\boxed{" + "1" * 2000 + "}") is None
    assert extract_answer("The answer is " + "x" * 5000) is None
    assert extract_answer("1" * 5000) is None


def test_reference_answer_reads_bare_answers_and_marked_solutions():
    assert reference_answer(r"\frac{1}{2}") == r"\frac{1}{2}"
    assert reference_answer("3+4=7\n#### 7") == "7"
    assert reference_answer(r"so $x=\boxed{(1,2)}$") == "(1,2)"
    assert reference_answer(" 72 ") == "72"


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        ("1/2", "0.5", True),
        (r"\frac{1}{2}", "0.5", True),
        (r"\dfrac12", "1/2", True),
        ("1,000", "1000", True),
        ("1{,}000", "1000", True),
        ("3.0", "3", True),
        ("-1,234.50", "-1234.5", True),
        ("+7", "7", True),
        ("-\\frac{3}{4}", "-0.75", True),
        ("0.333333", r"\frac{1}{3}", True),  # math-verify rounds to 6 places when one side is a decimal
        (r"\$18", "18", True),
        (r"\sqrt{4}", "2", True),
        ("x+1", "1+x", True),
        (r"2\sqrt{2}", r"\sqrt{8}", True),
        ("[1,2)", "[1, 2)", True),
        (r"\{2,1\}", r"\{1,2\}", True),
        ("x=2", "2", True),
        ("0.33", r"\frac{1}{3}", False),
        ("2", "3", False),
        ("1000", "100", False),
        ("1/3", "1/4", False),
        ("1/3", "333333/1000000", False),  # rounding applies only when a side is written as a decimal
        ("x+1", "x+2", False),
        ("[1,2)", "[1,2]", False),
        (r"\sqrt{2}", "1.4", False),
        ("", "1", False),
        ("1", "", False),
        (r"\frac{1}{2", "0.5", False),  # unbalanced: rejected without math-verify
        ("1" * 1001, "1" * 1001, False),  # over the cap, even though equal
    ],
)
def test_equivalent(checker, pred, ref, expected):
    assert equivalent(pred, ref) is expected  # the module-level API, through the fixture's checker


def test_plain_numbers_never_reach_the_helper(checker):
    before = checker.counts["guarded"]
    assert math_scorer("so 1200+34 = 1,234\n#### 1,234", "...\n#### 1234") == 1.0
    assert math_scorer(r"The answer is $\frac{3}{4}$.", "0.75") == 1.0
    assert math_scorer("The answer is 7.", "8") == 0.0
    assert math_scorer("I don't know", "8") == 0.0
    assert checker.counts["guarded"] == before


def test_math_scorer_uses_math_verify_for_the_rest(checker):
    assert math_scorer(r"Thus $\boxed{2\sqrt{2}}$.", r"\sqrt{8}") == 1.0
    assert math_scorer(r"Thus $\boxed{2\sqrt{3}}$.", r"\sqrt{8}") == 0.0


def _timed(fn, *args):
    start = time.perf_counter()
    return fn(*args), time.perf_counter() - start


def _in_thread(fn, *args):
    out = []
    t = threading.Thread(target=lambda: out.append(_timed(fn, *args)))
    t.start()
    t.join()
    return out[0]


@pytest.mark.parametrize("run", [_timed, _in_thread], ids=["main-thread", "other-thread"])
def test_a_hanging_check_returns_false_within_the_timeout(run):
    c = MathChecker(timeout=TIMEOUT, check=f"{_hang.__module__}:_hang")
    try:
        c.start()
        pid = c._helper.proc.pid
        result, took = run(c.equivalent, "x+y", "y+x")
        assert result is False and took < TIMEOUT + SLACK and took > TIMEOUT * 0.9
        assert c.counts["timeouts"] == 1
        assert c._helper.proc.pid == pid  # only the forked child died: no restart cost
    finally:
        c.close()


@pytest.mark.parametrize("run", [_timed, _in_thread], ids=["main-thread", "other-thread"])
def test_a_huge_exponent_times_out_in_sympy_and_the_checker_recovers(checker, run):
    timeouts = checker.counts["timeouts"]
    result, took = run(checker.equivalent, "9^{9^{9^{9}}}", "1")  # sympy evaluates this big integer in C
    assert result is False and took < TIMEOUT + SLACK
    assert checker.counts["timeouts"] == timeouts + 1
    assert checker.equivalent(r"\sqrt{9}", "3") is True


def test_inside_a_reward_worker_process():
    """VerifierScorer runs the scorer in a spawned pebble worker: the guard works there too, and a hang is a
    plain 0 reward from the checker's own timeout (default 2 s), not a reward failure from the pool's."""
    from relayrl.rewards.verifier import RewardConfig, VerifierScorer
    from relayrl.rollout import Rollout

    scorer = VerifierScorer(math_scorer, RewardConfig(timeout=20.0, workers=1, failure_reward=-1.0))
    try:
        texts = [r"so \boxed{2\sqrt{2}}", r"\boxed{9^{9^{9^{9}}}}", "#### 1,234", r"\boxed{\sqrt{2}}"]
        answers = [r"\sqrt{8}", "1", "1234", r"\sqrt{8}"]
        rollouts = [Rollout(0, 0, [1], [2], [0.0], 0, t, "stop", answer=a) for t, a in zip(texts, answers, strict=True)]
        assert scorer.score(rollouts) == {"reward_timeouts": 0.0, "reward_errors": 0.0}
        assert [r.reward for r in rollouts] == [1.0, 0.0, 1.0, 0.0]
    finally:
        scorer.close()


def test_a_stuck_helper_is_killed_and_replaced():
    c = MathChecker(timeout=TIMEOUT)
    try:
        c.start()
        stuck = c._helper.proc
        os.kill(stuck.pid, signal.SIGSTOP)
        result, took = _timed(c.equivalent, r"\sqrt{4}", "2")
        assert result is False and took < TIMEOUT + ma._GRACE + SLACK
        assert stuck.poll() is not None and c.counts["timeouts"] == 1
        assert c.equivalent(r"\sqrt{4}", "2") is True  # a fresh helper
    finally:
        c.close()


def _cheap_hostile_inputs(rng: random.Random) -> list[str]:
    """Inputs the checker must settle in-process: giant and degenerate strings, answers with an unclosed
    brace, and random unicode (mostly unassigned or private-use code points)."""
    out = [
        "\\frac{" * 5000,
        "\\boxed{" + "\\frac{" * 5000,
        "{" * 100_000 + "}" * 99_999,
        "\\boxed{" * 20_000,
        "The answer is " * 20_000 + "{",
        "#### " * 20_000 + "1",
        "1," * 200_000,
        "9" * 5000,
        "-" * 100_000 + "1",
        "".join(rng.choice("0123456789 {}\\$.,-/abc#") for _ in range(1 << 20)),  # 1 MB
    ]
    out += [rng.choice(["The answer is {} {{", "#### {} {{"]).format(_soup(rng, _LINE_TOKENS)) for _ in range(2000)]
    out += ["".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(1, 60))) for _ in range(500)]
    return out


def _costly_hostile_inputs(rng: random.Random) -> list[str]:
    """Inputs that do reach math-verify: malformed but balanced LaTeX, and sympy-killing towers."""
    wrappers = ["{}", "\\boxed{{{}}}", "The answer is {}.", "#### {}", "so $\\boxed{{{}}}$"]
    soups = (_soup(rng, [*_LINE_TOKENS, "\\boxed{", "$", "\n", ".", "\\"]) for _ in range(400))
    out = [rng.choice(wrappers).format(s) for s in soups if ma._balanced(s)][:100]
    return [*out, "\\boxed{10^{10^{10}}}", "\\boxed{(10^{10^{10}})!}", "\\boxed{9^{9^{9^{9}}}}"]


_LINE_TOKENS = [
    "\\frac", "{", "}", "^", "_", "\\sqrt", "\\left(", "\\right)", "1", "9", "x", "&", "(", "]", ",", "=", "\\infty",
    "\\text{", "%", "!", "\\cdot", "e", "i", "\\pi", "-", "/", "\\int", "\\sum_{", "0", "\\over", "'", "^{99^{99}}",
    "\\begin{matrix}", "\\end{pmatrix}",
]  # fmt: skip


def _soup(rng: random.Random, tokens: list[str]) -> str:
    return "".join(rng.choice(tokens) for _ in range(rng.randint(1, 40)))


def _score_all(inputs: list[str], rng: random.Random) -> float:
    """Each input as completion and as reference; the slowest single call."""
    refs = ["42", r"\frac{1}{2}", "x+1", r"\{1,2\}", "\\boxed{" * 50]
    worst = 0.0
    for text in inputs:
        for completion, answer in ((text, rng.choice(refs)), (rng.choice(refs), text)):
            t = time.perf_counter()
            assert math_scorer(completion, answer) in (0.0, 1.0)
            worst = max(worst, time.perf_counter() - t)
    return worst


def test_fuzz_hostile_inputs_are_settled_in_process(checker):
    rng = random.Random(1234)
    inputs = _cheap_hostile_inputs(rng)
    assert len(inputs) > 2500
    guarded, start = checker.counts["guarded"], time.perf_counter()
    assert _score_all(inputs, rng) < 0.5
    assert checker.counts["guarded"] - guarded < 50
    assert time.perf_counter() - start < 10


def test_fuzz_hostile_inputs_reaching_math_verify_never_raise_or_hang(checker):
    rng = random.Random(4321)
    start = time.perf_counter()
    assert _score_all(_costly_hostile_inputs(rng), rng) < TIMEOUT + SLACK
    assert time.perf_counter() - start < 15
