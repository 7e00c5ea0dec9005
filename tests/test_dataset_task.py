import json
import re

import pytest

from relayrl import build
from relayrl.config import load_config
from relayrl.tasks.dataset import DatasetConfig, DatasetTask, final_answer, score_final_answer


def _write(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


GOOD = [{"question": f"What is {i}+1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"} for i in range(20)]


def test_bad_rows_are_reported_by_row_number(tmp_path):
    rows = [*GOOD[:3], {"question": "no answer"}, GOOD[3], {"question": "", "answer": "1"}]
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError, match=r"2 bad rows") as err:
        DatasetTask(DatasetConfig(path=path))
    assert "row 4: field 'answer' is missing" in str(err.value)
    assert "row 6: field 'question' is empty" in str(err.value)


def test_bad_rows_skipped_when_configured(tmp_path):
    path = _write(tmp_path, [*GOOD, {"question": "no answer"}])
    task = DatasetTask(DatasetConfig(path=path, on_bad_row="skip", heldout_fraction=0.25))
    assert task.skipped == [f"{path} row 21: field 'answer' is missing"]
    heldout = {it.prompt for it in task.heldout()}
    assert len(heldout) == 5
    assert not heldout & {task.train_item(i).prompt for i in range(100)}


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"task\.dataset\.path"):
        DatasetTask(DatasetConfig(path=str(tmp_path / "nope.jsonl")))


def test_final_answer_reading():
    assert final_answer("so 3+4=7\n#### 7") == "7"
    assert final_answer("The total is 1,234 dollars.") == "1234"
    assert score_final_answer("it is 42", "work...\n#### 42") == 1.0
    assert score_final_answer("nothing", "#### 42") == 0.0


def test_dataset_task_from_config(tmp_path):
    path = _write(tmp_path, GOOD)
    cfg = load_config(None, ["task.name=dataset", f"task.dataset.path={path}"])
    assert len(build.task(cfg).heldout()) == 2


def test_heldout_file_is_held_out_and_evaluation_only_tasks_refuse_training(tmp_path):
    train = _write(tmp_path, GOOD)
    test_path = tmp_path / "test.jsonl"
    test_path.write_text("".join(json.dumps(r) + "\n" for r in GOOD[:3]))
    task = DatasetTask(DatasetConfig(path=train, heldout=str(test_path)))
    assert [it.prompt for it in task.heldout()] == [r["question"] + "\n" for r in GOOD[:3]]
    assert len({task.train_item(i).prompt for i in range(17)}) == 17  # the other 17, none held out
    assert not {it.prompt for it in task.heldout()} & {task.train_item(i).prompt for i in range(100)}
    only_eval = DatasetTask(DatasetConfig(path=train, heldout_fraction=1.0, heldout_max=1000))
    assert len(only_eval.heldout()) == 20
    with pytest.raises(ValueError, match="evaluation only"):
        only_eval.train_item(0)


def test_chat_prompts_go_through_the_chat_template(tmp_path):
    from relayrl.generation.sampler import encode_prompt
    from relayrl.models import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}{% endfor %}<a>"
    task = DatasetTask(DatasetConfig(path=_write(tmp_path, GOOD), chat=True, system="Be brief."))
    item = task.heldout()[0]
    assert item.prompt[0] == {"role": "system", "content": "Be brief."}
    assert tok.decode(encode_prompt(tok, item.prompt)) == f"<s>Be brief.<u>{item.prompt[1]['content']}<a>"


def test_dataset_scorers():
    from relayrl.tasks.dataset import SCORERS

    math_scorer, math_extract = SCORERS["math"]
    assert math_scorer("so the answer is $\\frac{1}{2}$.", "0.5") == 1.0
    assert math_extract("... #### 1,234") == "1,234" and math_scorer("... #### 1,234", "1234") == 1.0
    exact_scorer, _ = SCORERS["exact"]
    assert exact_scorer("so 1/2", "#### 0.5") == 0.0


def test_a_malformed_jsonl_line_is_named_by_its_line_number(tmp_path):
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps(r) for r in GOOD[:5]]
    lines[2] = '{"question": "What is 2+1?", "answer": 3'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"^task\.dataset\.path: {re.escape(str(path))} line 3 is not JSON: "):
        DatasetTask(DatasetConfig(path=str(path)))
    no_question = _write(tmp_path, [*GOOD[:4], {"answer": "#### 5"}, *GOOD[4:8]])
    with pytest.raises(ValueError, match="1 bad rows") as err:
        DatasetTask(DatasetConfig(path=no_question))
    assert "row 5: field 'question' is missing" in str(err.value)


def test_each_epoch_order_follows_the_seed(tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps(r) + "\n" for r in GOOD[:3]))

    def epoch(seed: int, e: int) -> list:
        task = DatasetTask(DatasetConfig(path=_write(tmp_path, GOOD), heldout=str(heldout), seed=seed))
        return [task.train_item(e * 17 + i).prompt for i in range(17)]

    assert epoch(0, 0) == epoch(0, 0) and sorted(epoch(0, 0)) == sorted(epoch(1, 0))  # the same 17 rows
    assert epoch(0, 0) != epoch(1, 0) and epoch(0, 1) != epoch(1, 1)  # in the seed's order
    assert epoch(0, 0) != epoch(0, 1)  # a new order each epoch
