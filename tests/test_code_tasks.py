"""Code tasks scored by execution in the sandbox: the expression task, HumanEval, and the code-feedback environment."""

import json

import pytest

import relayrl.tasks.expression as expression
from relayrl.environments.base import EnvironmentConfig, Reply
from relayrl.environments.code_feedback import CodeFeedback
from relayrl.rewards.code_execution import examples_program, extract_code, solution_code
from relayrl.sandbox import run
from relayrl.schema import ConfigError
from relayrl.tasks.expression import ExpressionConfig, ExpressionTask
from relayrl.tasks.humaneval import HumanEvalConfig, HumanEvalTask, problems, public_examples

# a helper from the prompt (10, 32, 38: its tests call encode_cyclic), floats (32), an import in the body (162)
CHOSEN = ("HumanEval/0", "HumanEval/10", "HumanEval/32", "HumanEval/38", "HumanEval/162")


@pytest.fixture(scope="module")
def tasks() -> dict[str, dict[str, object]]:
    """Every problem's item in each format, by task id (all held out)."""
    out = {}
    for fmt in ("completion", "chat"):
        out[fmt] = {it.meta["task_id"]: it for it in HumanEvalTask(HumanEvalConfig(fmt, heldout_size=164)).heldout()}
    return out


def test_expression_scorer_executes_allowed_expressions_only(monkeypatch):
    ran = []

    def printed(program, config=None):
        ran.append(program)
        return real(program, config)

    real = expression.printed
    monkeypatch.setattr(expression, "printed", printed)
    score = ExpressionTask.scorer
    assert score("3*7+5", "3,7,5=26") == 1.0
    assert score("(5+ 3)*7\n3*7+5", "3,7,5=56") == 1.0  # the first line counts
    assert score("3*7-5", "3,7,5=26") == 0.0  # runs, prints 16
    assert score("3*(7+5", "3,7,5=36") == 0.0  # a syntax error: a failed run
    assert ran == ["print(3*7+5)", "print((5+ 3)*7)", "print(3*7-5)", "print(3*(7+5)"]
    for completion in ("3*7+6", "3*7", "3*7+5+5", "03*7+5", "__import__('os')", "3**7+5", ""):
        assert score(completion, "3,7,5=26") == 0.0
    assert len(ran) == 4  # none of those ran


def test_expression_streams_are_deterministic_disjoint_and_solvable():
    cfg = ExpressionConfig(heldout_size=64)
    a, b = ExpressionTask(cfg), ExpressionTask(cfg)
    assert a.name == "expression-3x9"
    indices = range(-300, 300)
    train = [a.train_item(i) for i in indices]
    assert train == [b.train_item(i) for i in indices] and a.heldout() == b.heldout()
    assert len({it.prompt for it in a.heldout()}) == 64
    assert not {it.prompt for it in a.heldout()} & {it.prompt for it in train}
    for item in train + a.heldout():
        numbers, target = item.answer.split("=")
        assert item.prompt == f"N:{numbers} T:{target}\nA:"
        assert eval(item.solution) == int(target)  # our own digits and operators
        assert sorted(expression.NUMBER_RE.findall(item.solution)) == sorted(numbers.split(","))
    assert a.extract("3 * 7 + 5\n") == "3*7+5" and a.extract("\n") is None
    with pytest.raises(ConfigError, match="heldout_size"):
        ExpressionTask(ExpressionConfig(numbers=2, heldout_size=51))


def test_humaneval_split_and_training_stream():
    assert len(problems()) == 164
    task = HumanEvalTask(HumanEvalConfig())
    held = [it.meta["task_id"] for it in task.heldout()]
    epoch = [task.train_item(i).meta["task_id"] for i in range(100)]
    assert len(held) == 64 and len(set(epoch)) == 100 and not set(held) & set(epoch)
    assert held == sorted(held, key=lambda t: int(t.split("/")[1]))  # listed in task order
    assert epoch != [task.train_item(i).meta["task_id"] for i in range(100, 200)]  # each epoch its own order
    assert task.train_item(-1) == HumanEvalTask(HumanEvalConfig()).train_item(-1)
    assert task.train_item(-1).meta["task_id"] in epoch
    with pytest.raises(ValueError, match="evaluation only"):
        HumanEvalTask(HumanEvalConfig(heldout_size=164)).train_item(0)


def test_canonical_solutions_pass_in_both_formats_and_wrong_ones_fail(tasks):
    for task_id in CHOSEN:
        for fmt in ("completion", "chat"):
            item = tasks[fmt][task_id]
            assert HumanEvalTask.scorer(item.solution, item.answer) == 1.0, (task_id, fmt)
    item = tasks["completion"]["HumanEval/0"]
    assert HumanEvalTask.scorer(item.solution + "\ndef", item.answer) == 1.0  # the stop string the sampler kept
    assert HumanEvalTask.scorer("", item.answer) == 0.0
    for early_exit in ("    import sys; sys.exit(0)\n", "    import os; os._exit(0)\n"):  # before the tests run
        assert HumanEvalTask.scorer(early_exit, item.answer) == 0.0
    chat = tasks["chat"]["HumanEval/0"]
    assert "```python\n" in chat.prompt[0]["content"] and chat.solution.startswith("```python\nfrom typing")
    wrong = "Here:\n```python\ndef has_close_elements(numbers, threshold):\n    return True\n```"
    assert HumanEvalTask.scorer(wrong, chat.answer) == 0.0
    assert set(json.loads(item.answer)) == {"prompt", "test", "entry_point"}


def test_public_examples_parse_doctests_and_stated_calls():
    rows = {row["task_id"]: row for row in problems()}
    assert public_examples(rows["HumanEval/0"]["prompt"]) == [
        ("has_close_elements([1.0, 2.0, 3.0], 0.5)", "False"),
        ("has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)", "True"),
    ]
    assert public_examples(rows["HumanEval/72"]["prompt"])[0] == ("will_it_fly([1, 2], 5)", "False")  # `➞`
    assert ("round(find_zero([1, 2]), 2)", "-0.5") in public_examples(rows["HumanEval/32"]["prompt"])  # `# comment`
    assert public_examples(rows["HumanEval/80"]["prompt"]) == []  # `is_happy(a) => False`: prose


def test_every_kept_example_agrees_with_the_canonical_solution(tasks):
    """One execution runs every problem's examples program on its canonical solution."""
    items = [it for it in tasks["completion"].values() if it.meta["examples"]]
    assert len(items) == 138
    files = {
        f"p{n}.py": examples_program(solution_code(it.meta["prefix"], it.solution), it.meta["examples"])
        for n, it in enumerate(items)
    }
    runner = (
        "import runpy\nfailed = []\n"
        f"for n in range({len(items)}):\n"
        "    try:\n        runpy.run_path(f'p{n}.py', run_name='__main__')\n"
        "    except SystemExit as e:\n        failed += [n] if e.code else []\n"
        "print('failed', failed)\n"
    )
    result = run(runner, files=files)
    assert result.ok and result.stdout.strip().endswith("failed []"), result


def test_code_extraction_and_programs():
    assert extract_code("a\n```python\nx = 1\n```\nb\n```\ny = 2\n```\n") == "y = 2\n"
    assert extract_code("```python\nx = 1\n") == "x = 1\n"  # cut by the token budget
    assert extract_code("    return 1\n") == "    return 1\n"
    prefix = "def f():\n    '''doc'''\n"
    assert solution_code(prefix, "    return 1\n\nprint(f())\n") == prefix + "    return 1\n\n"
    assert solution_code(prefix, "```python\ndef f():\n    return 2\n```") == prefix + "\ndef f():\n    return 2\n"


def test_code_feedback_reports_the_first_failing_example(tasks):
    env = CodeFeedback(EnvironmentConfig(name="code_feedback", reply_chars=200))
    assert env.format.stop_strings == ()
    item = tasks["completion"]["HumanEval/0"]
    reply = env.respond(item, ["    pass\n", "    return True\n"])
    assert reply == Reply("has_close_elements([1.0, 2.0, 3.0], 0.5): expected False, got True")
    assert "SyntaxError" in env.respond(item, ["    return (\n"]).text
    assert env.respond(item, [item.solution + "\ndef"]) is None
    chat = tasks["chat"]["HumanEval/0"]
    assert env.respond(chat, [chat.solution]) is None
    assert env.respond(tasks["chat"]["HumanEval/38"], ["anything"]) is None  # no examples to run
    short = CodeFeedback(EnvironmentConfig(name="code_feedback", reply_chars=20))
    assert len(short.respond(item, ["    return True\n"]).text) == 20
