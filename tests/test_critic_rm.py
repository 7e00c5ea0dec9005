"""Critic-RM: stage 1's critique filtering on a scripted critic, joint training that learns, the M-critique scorer."""

import json
from collections import Counter

import pytest
import torch

from relayrl import build
from relayrl.cli import main
from relayrl.config import load_config
from relayrl.models import TinySize, load_model_and_tokenizer
from relayrl.rewards.critic_rm import CriticConfig, CriticRewardModel
from relayrl.rewards.critique_filter import FilterStats
from relayrl.rewards.model_scorer import RewardModelScorer
from relayrl.rewards.preference import Pair, PreferenceConfig, arithmetic_critique, load_pairs
from relayrl.training.critic_rm import Critiqued, check, critique_pairs, heldout_accuracy, joint_train
from relayrl.training.reward_model import RMConfig, RMModelConfig, RMTrainConfig


def test_arithmetic_critiques_and_the_config_check():
    assert (
        arithmetic_critique("Q:3+4-9\nA:", "3+4=7\n7-9=-2\n#-2")
        == " 3+4=7, 7-9=-2; the response says -2: right. Score: 8"
    )
    assert arithmetic_critique("Q:3+4\nA:", "3+4=7\n#6") == " 3+4=7; the response says 6: wrong. Score: 2"
    assert arithmetic_critique("Q:3+4\nA:", "seven") == " 3+4=7; the response says nothing: wrong. Score: 2"
    with pytest.raises(ValueError, match=r"critic\.warm_steps"):
        check(RMConfig(kind="critic", data=PreferenceConfig(path="pairs.jsonl")))
    with pytest.raises(ValueError, match=r"critic\.template"):
        check(RMConfig(kind="critic", critic=CriticConfig(template="{prompt} only")))


def test_stage1_drops_unparsed_and_contradicting_critiques_and_keeps_the_most_decided():
    pairs = [Pair("Q:1+1\nA:", "1+1=2\n#2", "1+1=2\n#3"), Pair("Q:2+2\nA:", "2+2=4\n#4", "2+2=4\n#5")]
    script = {  # three critiques per response, handed out in order
        "1+1=2\n#2": ["right. Score: 8", "no verdict", "looks off. Score: 3"],
        "1+1=2\n#3": ["wrong. Score: 2", "great. Score: 11", "fine. Score: 9"],  # 11: outside 0..10, unparsed
        "2+2=4\n#4": ["Score: 1", "Score: 2", "?"],
        "2+2=4\n#5": ["Score: 7", "Score: 8", "Score: 9"],
    }
    asked = Counter()

    def critic(asks: list[tuple[str, str]]) -> list[str]:
        out = []
        for _, response in asks:
            out.append(script[response][asked[response]])
            asked[response] += 1
        return out

    stats = FilterStats()
    kept = critique_pairs(pairs, critic, 3, stats)
    # pair 1: chosen scores 8, 3 (mean 5.5), rejected 2, 9 (mean 5.5): 3 and 9 contradict the label
    # pair 2: chosen 1, 2 never beat the rejected mean 8: dropped (2 + 3 critiques on the wrong side)
    assert [(k.pair, k.chosen, k.rejected) for k in kept] == [(pairs[0], "right. Score: 8", "wrong. Score: 2")]
    assert (stats.pairs, stats.kept, stats.critiques, stats.unparsed, stats.contradicting) == (2, 1, 9, 3, 7)
    assert sum(asked.values()) == 12


def test_joint_training_moves_from_critiques_to_rewards_that_rank_held_out_pairs():
    """Stage 2 on right critiques (the program's): the LM learns to write them and the head learns to rank pairs."""
    cfg = RMConfig(kind="critic", model=RMModelConfig(hidden=32), train=RMTrainConfig(steps=80, batch_size=16, lr=3e-3))
    train, heldout, _ = load_pairs(PreferenceConfig(synthetic_rows=400, heldout_max=64))
    lm, tokenizer = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2))
    torch.manual_seed(0)
    model = CriticRewardModel(lm, tokenizer, cfg.critic)
    kept = [
        Critiqued(p, arithmetic_critique(p.prompt, p.chosen), arithmetic_critique(p.prompt, p.rejected)) for p in train
    ]
    responses = [(p.prompt, r) for p in heldout for r in (p.chosen, p.rejected)]
    contexts = [model.context(p, r) for p, r in responses]
    critiques = [model.critique_ids(arithmetic_critique(p, r)) for p, r in responses]

    def accuracy_and_lm_loss() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            rewards, lm_loss = model(contexts, critiques)
        return (rewards[0::2] > rewards[1::2]).float().mean().item(), lm_loss.item()

    (start, lm_start) = accuracy_and_lm_loss()
    history = joint_train(model, kept, heldout[:4], cfg, show_progress=False)
    (end, lm_end) = accuracy_and_lm_loss()
    assert [h["weight"] for h in history[1:]] == [1.0]  # the last step is all Bradley-Terry
    assert lm_end < lm_start / 2  # it learned to write the critiques
    assert start < 0.7 and end > 0.95  # and to score a response from its critique


def test_rm_train_kind_critic_runs_both_stages_and_reloads(tmp_path, capsys):
    out = tmp_path / "critic_rm"
    settings = {
        "kind": "critic",
        "output": out,
        "data.synthetic_rows": 600,
        "data.heldout_max": 16,
        "model.hidden": 32,
        "critic.warm_steps": 120,
        "critic.pairs": 32,
        "critic.samples": 3,
        "critic.critiques": 2,
        "train.batch_size": 16,
        "train.steps": 10,
        "train.eval_every": 10,
    }
    main(["rm", "train", *(f"{k}={v}" for k, v in settings.items())])
    metrics = json.loads((out / "metrics.json").read_text())
    s = metrics["stage1"]
    assert s["pairs"] == 32 and s["kept"] > 0 and s["kept"] + s["dropped"] == 32
    assert s["critiques"] + s["unparsed"] == 32 * 2 * 3 and s["contradicting"] > 0
    assert "stage 1: kept" in capsys.readouterr().out
    model = CriticRewardModel.from_pretrained(str(out))
    _, heldout, _ = load_pairs(PreferenceConfig(synthetic_rows=600, heldout_max=16))
    again = heldout_accuracy(model, heldout, 2, seed=0)
    # fractions of discrete decisions, recomputed by the same kernels in the same order on the same (saved) bits:
    # equal; approx only spares the division
    assert again == pytest.approx({k: v for k, v in metrics.items() if k in again})


def test_scorer_averages_m_sampled_critiques_with_a_seed(tmp_path):
    lm, tokenizer = load_model_and_tokenizer("tiny-llama", TinySize(32, 1, 2))
    cfg = CriticConfig(max_new_tokens=12, critiques=2)
    torch.manual_seed(0)
    CriticRewardModel(lm, tokenizer, cfg).save_pretrained(tmp_path)
    model = CriticRewardModel.from_pretrained(str(tmp_path))
    prompt, response = "Q:3+4\nA:", "3+4=7\n#7"
    rewards, contexts, critiques = model.sampled_rewards([(prompt, response)], 3, torch.Generator().manual_seed(5))
    one_by_one = [
        model([c], [k.completion_ids], lm_loss=False)[0].item() for c, k in zip(contexts, critiques, strict=True)
    ]
    # padding does not change a reward: only its float32 order (other shapes), which moves a reward (~1.2 here)
    # by <= ~n * 2^-24 x 1.2, n ~ 39 tokens + 128 + 32 (1 layer's dot products) = 200: 1.4e-5 worst case
    assert rewards[0].tolist() == pytest.approx(one_by_one, abs=2e-5)

    scorer = RewardModelScorer(str(tmp_path), critiques=3, seed=5)
    assert scorer(response, "7", prompt) == pytest.approx(sum(one_by_one) / 3, abs=2e-5)  # as above
    # exact: the same seed, kernels and order
    assert scorer(response, "7", prompt) == RewardModelScorer(str(tmp_path), critiques=3, seed=5)(response, "7", prompt)
    assert scorer.tokens(response, prompt) == 3 * len(contexts[0]) + sum(len(k.completion_ids) + 1 for k in critiques)
    default = RewardModelScorer(str(tmp_path), seed=5)  # M from the folder: critiques=2
    # the scorer runs model.score on the same bits with the same seed (same kernels, same order): equal; 1e-6 is slack
    assert default(response, "7", prompt) == pytest.approx(model.score(prompt, response, 0, 5)[0], abs=1e-6)
    assert RewardModelScorer(str(tmp_path), seed=6)(response, "7", prompt) != default(response, "7", prompt)

    run = load_config(overrides=["reward.source=reward_model", f"reward.model={tmp_path}", "reward.critiques=3"])
    assert build.reward_fn(run, build.task(run)) == RewardModelScorer(str(tmp_path), critiques=3)
