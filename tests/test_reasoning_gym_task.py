import json
import pickle

import pytest
import reasoning_gym

from relayrl import build
from relayrl.config import load_config
from relayrl.rewards.verifier import RewardConfig, VerifierScorer
from relayrl.rollout import Rollout
from relayrl.tasks.reasoning_gym import (
    ReasoningGymConfig,
    ReasoningGymTask,
    extract_lenient,
    extract_tagged,
    score_lenient,
    score_tagged,
    worked_solution,
)

SMALL = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}  # 200 one-digit questions: collisions


def _task(name: str = "chain_sum", **kw) -> ReasoningGymTask:
    return ReasoningGymTask(ReasoningGymConfig(name=name, config=kw.pop("config", SMALL), **kw))


def _answer(item) -> str:
    return json.loads(item.answer)["answer"]


def test_heldout_is_distinct_and_disjoint_from_10k_training_items():
    task = _task(heldout_size=300)
    heldout = {it.meta["question"] for it in task.heldout()}
    assert len(heldout) == 300
    train = [task.train_item(i) for i in range(-500, 9500)]  # negative indices: the SFT stream
    assert not heldout & {it.meta["question"] for it in train}
    assert len({it.meta["question"] for it in train}) > 1000  # varied, not one redrawn item


def test_items_are_deterministic_across_task_instances():
    a, b = _task(seed=3), _task(seed=3)
    assert [a.train_item(i) for i in (0, 1, 777, -1, 10**9)] == [b.train_item(i) for i in (0, 1, 777, -1, 10**9)]
    assert a.heldout() == b.heldout()
    assert _task(seed=4).heldout() != a.heldout()


def test_only_full_credit_counts():
    task = _task("gsm_symbolic", config={}, heldout_size=2)
    item = task.heldout()[0]
    right = _answer(item)
    wrong = str(int(right) + 1)
    ref = json.loads(item.answer)
    dataset = reasoning_gym.create_dataset("gsm_symbolic", seed=ref["seed"], size=ref["size"])
    assert dataset.score_answer(wrong, dataset[ref["index"]]) == 0.01  # reasoning-gym's partial credit
    assert score_tagged(f"<answer>{wrong}</answer>", item.answer) == 0.0
    assert score_tagged(f"<answer>{right}</answer>", item.answer) == 1.0
    assert score_tagged(f"it is {right}", item.answer) == 0.0  # strict: the tag is the format
    assert score_lenient(f"so the answer is {right}.", item.answer) == 1.0


def test_answer_extraction():
    assert extract_tagged("x <answer> 7 </answer> then <answer>8</answer>") == "8"
    assert extract_tagged("7") is None
    assert extract_lenient("3 - 10 = -7") == "-7"
    assert extract_lenient("about 1,234 apples, or so") == "1234"
    assert extract_lenient("<answer>yes</answer> 5") == "yes"
    assert extract_lenient("no digits\nthe last line\n\n") == "the last line"
    assert extract_lenient("") is None


def test_worked_solutions_end_in_the_answer_and_score_full():
    task = _task(config={"min_terms": 3, "max_terms": 4, "min_digits": 1, "max_digits": 2})
    for i in range(50):
        item = task.train_item(i)
        assert item.solution.endswith(f"<answer>{_answer(item)}</answer>")
        assert item.solution.count("\n") >= 2  # one line per step
        assert score_tagged(item.solution, item.answer) == 1.0
    assert worked_solution({"answer": "x", "metadata": {}}) == "<answer>x</answer>"
    assert worked_solution({"answer": "6", "metadata": {"expression": "2 * 3"}}) == "2 * 3 = 6\n<answer>6</answer>"


def test_scorer_runs_pickled_in_spawned_worker():
    task = _task(heldout_size=4)
    assert pickle.loads(pickle.dumps(task.scorer)) is task.scorer
    items = task.heldout()
    texts = [f"<answer>{_answer(it)}</answer>" for it in items[:3]] + ["<answer>-99999</answer>"]
    rollouts = [
        Rollout(0, 0, [1], [2], [0.0], 0, t, "stop", answer=it.answer) for t, it in zip(texts, items, strict=True)
    ]
    scorer = VerifierScorer(task.scorer, RewardConfig(timeout=30.0))
    try:
        assert scorer.score(rollouts) == {"reward_timeouts": 0.0, "reward_errors": 0.0}
    finally:
        scorer.close()
    assert [r.reward for r in rollouts] == [1.0, 1.0, 1.0, 0.0]


def test_chat_prompts_go_through_the_chat_template():
    from relayrl.generation.sampler import encode_prompt
    from relayrl.models import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}{% endfor %}<a>"
    task = _task(system="Be brief.", heldout_size=2)
    item = task.heldout()[0]
    assert item.prompt[1]["content"].startswith(item.meta["question"])
    assert tok.decode(encode_prompt(tok, item.prompt)) == f"<s>Be brief.<u>{item.prompt[1]['content']}<a>"
    assert isinstance(_task(chat=False, heldout_size=2).heldout()[0].prompt, str)


def test_from_config_and_its_errors():
    cfg = load_config(
        None,
        [
            "task.name=reasoning_gym",
            "task.reasoning_gym.name=basic_arithmetic",
            "task.reasoning_gym.config.max_terms=2",
            "task.reasoning_gym.heldout_size=5",
        ],
    )
    task = build.task(cfg)
    assert task.name == "reasoning_gym/basic_arithmetic" and len(task.heldout()) == 5
    assert task.stop_strings == ("</answer>",)
    with pytest.raises(ValueError, match="unknown generator"):
        _task("no_such_generator")
    with pytest.raises(ValueError, match=r"task\.reasoning_gym\.config"):
        _task(config={"no_such_field": 1})
    with pytest.raises(ValueError, match=r"task\.reasoning_gym\.seed"):
        _task(config={"seed": 1})
    with pytest.raises(ValueError, match="distinct questions"):
        _task(config={"min_terms": 1, "max_terms": 1, "min_digits": 1, "max_digits": 1}, heldout_size=50)
