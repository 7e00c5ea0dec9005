"""Numerical guards: non-finite steps skipped, counted and stopped; PPO's clip statistic on the side it binds."""

import math

import pytest
import torch

from relayrl.errors import NonFiniteTraining, nonfinite_streak
from relayrl.models import TinySize, load_model_and_tokenizer
from relayrl.training.trainer import AlgorithmConfig, OptimConfig, Sequence, Trainer


def _trainer(algo: AlgorithmConfig) -> Trainer:
    model, tok = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=0)
    return Trainer(model, OptimConfig(warmup_steps=0), algo, tok.pad_token_id)


def test_a_non_finite_step_is_skipped_and_leaves_weights_and_adam_untouched():
    trainer = _trainer(AlgorithmConfig())
    before = [p.detach().clone() for p in trainer.model.parameters()]
    nan = Sequence([5, 6, 7], [8, 9], [-1.0, -1.0], [math.nan, math.nan])
    metrics = trainer.step([nan, Sequence([5, 6, 7], [9, 8], [-1.0, -1.0], [1.0, 1.0])])
    assert metrics["skipped_nonfinite"] == 1.0 and not math.isfinite(metrics["loss"])
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert trainer.optimizer.state == {} and trainer.scheduler.last_epoch == 0
    assert all(p.grad is None for p in trainer.model.parameters())  # nothing carried into the next step
    ok = trainer.step([Sequence([5, 6, 7], [9, 8], [-1.0, -1.0], [1.0, 1.0])])
    assert ok["skipped_nonfinite"] == 0.0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_non_finite_steps_in_a_row_stop_the_run_with_a_named_limit():
    in_a_row = 0
    for skipped in (True, True, False, True, True):  # a finite step resets the count in a row
        in_a_row = nonfinite_streak(skipped, in_a_row, limit=3, where="step")
    assert in_a_row == 2
    with pytest.raises(NonFiniteTraining, match=r"optim\.max_nonfinite_steps"):
        nonfinite_streak(True, in_a_row, limit=3, where="step")


def test_ppo_clip_fraction_counts_only_the_side_where_the_clip_binds():
    """Four tokens, mu chosen so pi/mu is e^0.5 (above 1 + 0.2) or e^-0.5 (below 1 - 0.2): the clip binds for a
    positive advantage above the range and a negative one below it, so 2 of 4 tokens are clipped."""
    trainer = _trainer(AlgorithmConfig(loss="ppo", clip_eps=0.2))
    seq = [Sequence([5, 6, 7], [8], [0.0], [a]) for a in (1.0, -1.0, 1.0, -1.0)]
    batch_logp = []
    for s in seq:  # the model's own log-prob of the token, so that mu = logp - shift gives an exact ratio
        with torch.no_grad():
            logits = trainer.model(torch.tensor([s.prompt_ids + s.completion_ids])).logits[0, -2].float()
        batch_logp.append(float(logits.log_softmax(-1)[8]))
    for s, logp, shift in zip(seq, batch_logp, (0.5, 0.5, -0.5, -0.5), strict=True):
        s.behaviour_logprobs = [logp - shift]
    metrics = trainer.accumulate(seq)
    assert metrics["clipped_mean"] == pytest.approx(0.5)
