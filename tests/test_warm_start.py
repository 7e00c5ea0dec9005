"""The warm start ends at a level, not a step count: `sft.target_match` of held-aside solutions reproduced."""

import json
from types import SimpleNamespace

import torch

from relayrl import phases
from relayrl.algorithms.sequences import Sequence
from relayrl.config import load_config
from relayrl.controller import train
from relayrl.run import Run

VOCAB = 6


class Successor(torch.nn.Module):
    """A stand-in model whose most likely next token is always the current one plus 1 (mod VOCAB)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # where the inputs go: the model's device

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=torch.nn.functional.one_hot((input_ids + 1) % VOCAB, VOCAB).float())


def test_reproduced_counts_sequences_whose_every_trained_token_is_the_argmax():
    seqs = [
        Sequence([1, 2], [3, 4, 5]),  # every next token is the successor: reproduced
        Sequence([4], [5, 0]),  # wraps round: reproduced
        Sequence([1, 2], [3, 5]),  # 3 -> 5, not 4: not reproduced
        Sequence([2, 3], [4, 0, 1], loss_mask=[1.0, 0.0, 1.0]),  # 4 -> 0 is masked out (an environment's reply)
        Sequence([2, 3, 2], [3]),  # the prompt itself is not trained on (3 -> 2): reproduced
    ]
    # 4 of 5; 2 rows at a time as well as all at once (the padding of a short row is not a trained token)
    assert phases.reproduced(Successor(), seqs, pad_id=0) == 4 / 5
    assert phases.reproduced(Successor(), seqs, pad_id=0, rows=2) == 4 / 5


def _cfg(tmp_path, tiny, **extra):
    return load_config(None, tiny(tmp_path, **{"sft.steps": 100, "sft.match_items": 8, **extra}))


def test_warm_start_stops_at_the_first_check_that_reaches_the_target(tmp_path, tiny, monkeypatch):
    checked = []

    def reproduced(model, seqs, pad_id):
        checked.append(len(seqs))
        return [0.1, 0.2, 0.35, 0.9][len(checked) - 1]

    monkeypatch.setattr(phases, "reproduced", reproduced)
    cfg = _cfg(tmp_path, tiny, **{"sft.target_match": 0.3, "sft.match_every": 10})
    run = Run(cfg, tmp_path)
    assert phases.warm_start(run, SimpleNamespace(requested=False), show_progress=False) == 30
    assert checked == [8, 8, 8]  # at steps 10, 20, 30, on the 8 held-aside solutions


def test_without_a_target_the_warm_start_takes_every_step_and_never_checks(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(phases, "reproduced", lambda *a: 1 / 0)
    run = Run(_cfg(tmp_path, tiny, **{"sft.steps": 12, "sft.target_match": 0, "sft.match_every": 5}), tmp_path)
    assert phases.warm_start(run, SimpleNamespace(requested=False), show_progress=False) == 12


def test_a_run_reports_where_its_warm_start_stopped(tmp_path, tiny):
    # a task small enough to learn in a few dozen steps at a high learning rate: 1+1 .. 4+4
    easy = {"task.arithmetic.max_value": 4, "task.arithmetic.operators": "+", "task.arithmetic.heldout_size": 4}
    extra = {"sft.steps": 400, "sft.lr": 0.01, "sft.target_match": 0.5, "sft.match_every": 10, **easy}
    run_dir = train(_cfg(tmp_path, tiny, **extra), show_progress=False)
    steps = json.loads((run_dir / "summary.json").read_text())["sft_steps"]
    assert 0 < steps < 400 and steps % 10 == 0
