"""relayrl rm train: preference data validation and a Bradley-Terry reward model that learns."""

import json

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from relayrl.cli import main
from relayrl.rewards.preference import PreferenceConfig, load_pairs
from relayrl.training.reward_model import pair_accuracy


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bad_preference_rows_are_named_by_row_number(tmp_path):
    rows = [
        {"prompt": "q1", "chosen": "a", "rejected": "b"},
        {"prompt": "q2", "chosen": "", "rejected": "b"},
        {"prompt": "q3", "rejected": "b"},
        {"prompt": "q4", "chosen": "same", "rejected": "same"},
        {"prompt": "q5", "chosen": "c", "rejected": "d"},
    ]
    path = _write(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(ValueError) as err:
        load_pairs(PreferenceConfig(path=path))
    message = str(err.value)
    assert "row 2: field 'chosen' is empty" in message
    assert "row 3: field 'chosen' is missing" in message
    assert "row 4: chosen and rejected are identical" in message
    train, heldout, skipped = load_pairs(PreferenceConfig(path=path, on_bad_row="skip", heldout_fraction=0.5))
    assert len(train) + len(heldout) == 2 and len(skipped) == 3
    assert {p.prompt for p in train + heldout} == {"q1", "q5"}


def test_rm_train_learns_arithmetic_preferences_and_reloads(tmp_path, capsys):
    out = tmp_path / "rm"
    main(["rm", "train", "train.steps=200", "train.eval_every=200", "data.synthetic_rows=2048", f"output={out}"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heldout_pair_accuracy_start"] < 0.65  # chance, before training
    assert metrics["heldout_pair_accuracy"] > 0.75  # it learned to prefer the right final answer
    assert "held-out pair accuracy" in capsys.readouterr().out
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    _, heldout, _ = load_pairs(PreferenceConfig(synthetic_rows=2048))
    # a fraction of discrete decisions, recomputed on the same (saved) bits by the same kernels in the same order
    # and batches: equal; approx only spares the division
    assert pair_accuracy(model, tokenizer, heldout, 256) == pytest.approx(metrics["heldout_pair_accuracy"])
