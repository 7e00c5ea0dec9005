"""Critic-RM training (arXiv 2411.16646): `relayrl rm train kind=critic`.

Stage 1: a critic samples `critic.samples` critiques of each response of each training pair, each meant to end
in 'Score: N'. Critiques without a score are dropped, then those whose score contradicts the label, and the
filter keeps the most decided of the rest (rewards/critique_filter.py); a pair without an agreeing critique on
both sides is dropped. An untrained tiny critic writes nothing useful, so on `relayrl:arithmetic` it is first
warmed by SFT on critiques a program writes (`arithmetic_critique`: the program knows the answer); what it then
samples is imperfect, which is what the filter is for.
Stage 2: one model learns jointly to write the kept critiques (LM loss) and to score prompt + response + critique
(the head, Bradley-Terry on the pair), the weight moving from the first loss to the second (`critic_rm`).
Held-out pair accuracy compares mean rewards over M critiques the model samples itself, as at inference.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import track
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from relayrl.adapters import apply, causal_lm, merged_model
from relayrl.algorithms.reward_losses import critic_rm, critic_weight
from relayrl.models import TinySize, load_model_and_tokenizer
from relayrl.rewards.critic_rm import SCORES, CriticConfig, CriticRewardModel, context_ids, write_critiques
from relayrl.rewards.critique_filter import Critique, FilterStats, best_critiques
from relayrl.rewards.judge import parse_score
from relayrl.rewards.preference import Pair, arithmetic_critique, load_pairs
from relayrl.training.reward_model import RMConfig
from relayrl.training.trainer import AlgorithmConfig, OptimConfig, Sequence, Trainer

Critic = Callable[[list[tuple[str, str]]], list[str]]
"""(prompt, response) pairs -> one sampled critique of each."""


@dataclass
class Critiqued:
    pair: Pair
    chosen: str  # the kept critique of the chosen response
    rejected: str


def check(cfg: RMConfig) -> None:
    c = cfg.critic
    if "{prompt}" not in c.template or "{response}" not in c.template:
        raise ValueError(f"critic.template needs {{prompt}} and {{response}}; got {c.template!r}")
    if min(c.samples, c.critiques, c.max_new_tokens) < 1:
        raise ValueError("critic.samples, critic.critiques and critic.max_new_tokens must be >= 1")
    if c.warm_steps and cfg.data.path != "relayrl:arithmetic":
        raise ValueError(
            "critic.warm_steps: programmatic critiques exist only for data.path=relayrl:arithmetic; "
            "set critic.warm_steps=0 (and critic.model to a critic that can already write critiques)"
        )


def model_critic(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: CriticConfig, seed: int) -> Critic:
    """Critiques sampled from a causal LM after `cfg.template`."""
    generator = torch.Generator().manual_seed(seed)

    def critic(asks: list[tuple[str, str]]) -> list[str]:
        contexts = [context_ids(tokenizer, cfg.template, p, r) for p, r in asks]
        return [c.text for c in write_critiques(lm, tokenizer, contexts, cfg, generator)]

    return critic


def critique_pairs(pairs: list[Pair], critic: Critic, samples: int, stats: FilterStats) -> list[Critiqued]:
    """Stage 1: `samples` critiques of each response; those without a score in 0..10 are counted in
    `stats.unparsed` and left out, the rest filtered by the pair's label."""
    texts = critic([(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected) for _ in range(samples)])
    kept = []
    for i, pair in enumerate(pairs):
        sides = []
        for side in range(2):
            written = texts[(2 * i + side) * samples : (2 * i + side + 1) * samples]
            scored = [Critique(t, s) for t in written if (s := parse_score(t, *SCORES)) is not None]
            stats.unparsed += samples - len(scored)
            sides.append(scored)
        best = best_critiques(*sides, stats)
        if best:
            kept.append(Critiqued(pair, best[0].text, best[1].text))
    return kept


def warm_critic(
    lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: list[Pair], cfg: RMConfig, show_progress: bool
) -> None:
    """SFT on programmatic critiques of both responses of random training pairs (`relayrl:arithmetic`)."""
    trainer = Trainer(lm, OptimConfig(lr=cfg.critic.warm_lr), AlgorithmConfig(), tokenizer.pad_token_id)
    rng, eos = random.Random(cfg.seed), [tokenizer.eos_token_id]
    for _ in track(range(cfg.critic.warm_steps), description="critic warm-up", disable=not show_progress):
        batch = [
            Sequence(
                context_ids(tokenizer, cfg.critic.template, p.prompt, r),
                tokenizer(arithmetic_critique(p.prompt, r), add_special_tokens=False)["input_ids"] + eos,
            )
            for p in rng.sample(pairs, min(cfg.train.batch_size, len(pairs)))
            for r in (p.chosen, p.rejected)
        ]
        trainer.step(batch, supervised=True)


def heldout_accuracy(model: CriticRewardModel, pairs: list[Pair], m: int, seed: int) -> dict[str, float]:
    """Pair accuracy of the mean reward over m sampled critiques, of the first critique's alone, and of the
    critiques' own 'Score: N' averaged (the model as a judge; unparsed scores count 0)."""
    responses = [(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]
    rewards, _, critiques = model.sampled_rewards(responses, m, torch.Generator().manual_seed(seed))
    scores = [parse_score(c.text, *SCORES) or 0.0 for c in critiques]
    rewards, scores = rewards.view(len(pairs), 2, m), torch.tensor(scores).view(len(pairs), 2, m)
    return {
        "heldout_pair_accuracy": (rewards[:, 0].mean(-1) > rewards[:, 1].mean(-1)).float().mean().item(),
        "heldout_pair_accuracy_one_critique": (rewards[:, 0, 0] > rewards[:, 1, 0]).float().mean().item(),
        "heldout_score_accuracy": (scores[:, 0].mean(-1) > scores[:, 1].mean(-1)).float().mean().item(),
    }


def joint_train(
    model: CriticRewardModel, data: list[Critiqued], heldout: list[Pair], cfg: RMConfig, show_progress: bool
) -> list[dict]:
    """Stage 2: `train.steps` steps of the joint loss on batches of kept pairs; the evaluation history."""
    t, m = cfg.train, cfg.critic.critiques
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr)
    rng = random.Random(cfg.seed)
    history = [{"step": 0, **heldout_accuracy(model, heldout, m, cfg.seed)}]
    for step in track(range(t.steps), description="Critic-RM", disable=not show_progress):
        model.train()
        batch = rng.sample(data, min(t.batch_size, len(data)))
        contexts = [model.context(c.pair.prompt, r) for c in batch for r in (c.pair.chosen, c.pair.rejected)]
        rewards, lm_loss = model(contexts, [model.critique_ids(k) for c in batch for k in (c.chosen, c.rejected)])
        weight = critic_weight(step, t.steps)
        loss = critic_rm(lm_loss, rewards[0::2], rewards[1::2], weight)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % t.eval_every == 0 or step + 1 == t.steps:
            record = {"step": step + 1, "loss": loss.item(), "lm_loss": lm_loss.item(), "weight": weight}
            history.append(record | heldout_accuracy(model, heldout, m, cfg.seed))
    return history


def _adapted(lm: PreTrainedModel, cfg: RMConfig, base: str):
    """The LM with adapters to train (rm.model.lora), or as it is."""
    return apply(lm, cfg.model.lora, base) if cfg.model.lora.rank else lm


def train_critic_rm(cfg: RMConfig, show_progress: bool = True) -> dict:
    """Both stages, evaluate, save to `cfg.output`; returns the metrics also written to metrics.json there."""
    check(cfg)
    train_pairs, heldout, skipped = load_pairs(cfg.data)
    c, size = cfg.critic, TinySize(cfg.model.hidden, cfg.model.layers, cfg.model.heads)
    seconds, t0 = {}, time.perf_counter()
    lm, tokenizer = load_model_and_tokenizer(c.model or cfg.model.name_or_path, size, cfg.seed)
    lm = _adapted(lm, cfg, c.model or cfg.model.name_or_path)
    if c.warm_steps:
        warm_critic(lm, tokenizer, train_pairs, cfg, show_progress)
    seconds["warm"], t0 = time.perf_counter() - t0, time.perf_counter()
    stats = FilterStats()
    critiqued = train_pairs[: c.pairs or None]
    kept = critique_pairs(critiqued, model_critic(causal_lm(lm), tokenizer, c, cfg.seed), c.samples, stats)
    seconds["stage1"], t0 = time.perf_counter() - t0, time.perf_counter()
    if not kept:
        raise ValueError(
            f"Critic-RM stage 1 kept none of {len(critiqued)} pairs ({stats.unparsed} critiques without a score, "
            f"{stats.contradicting} contradicting the label); raise critic.samples or critic.warm_steps"
        )
    if c.model:  # a separate critic wrote the critiques; stage 2 trains the reward model's own LM
        lm, tokenizer = load_model_and_tokenizer(cfg.model.name_or_path, size, cfg.seed)
        lm = _adapted(lm, cfg, cfg.model.name_or_path)
    torch.manual_seed(cfg.seed)
    model = CriticRewardModel(causal_lm(lm), tokenizer, c, cfg.train.max_length)  # LoRA: adapted layers in place
    history = joint_train(model, kept, heldout, cfg, show_progress)
    seconds["stage2"] = time.perf_counter() - t0
    out = Path(cfg.output)
    model.lm = merged_model(lm)  # a plain LM folder, as reward.model loads it
    model.save_pretrained(out)
    metrics = {
        "kind": "critic",
        **{k: v for k, v in history[-1].items() if k.startswith("heldout")},
        "heldout_pair_accuracy_start": history[0]["heldout_pair_accuracy"],
        "critiques_per_response": c.critiques,
        "train_pairs": len(train_pairs),
        "heldout_pairs": len(heldout),
        "skipped_rows": skipped,
        "stage1": asdict(stats) | {"dropped": stats.pairs - stats.kept},
        "seconds": seconds,
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
