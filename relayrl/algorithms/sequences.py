"""Scored rollouts -> what the trainer consumes: token ids with an advantage on every completion token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from relayrl.algorithms import advantages
from relayrl.rollout import Rollout, message_wise


@dataclass
class Sequence:
    """What the trainer consumes: ids in, per-token targets and weights out."""

    prompt_ids: list[int]
    completion_ids: list[int]
    behaviour_logprobs: list[float] | None = None  # mu; None for supervised data
    advantages: list[float] | None = None  # one per completion token
    loss_mask: list[float] | None = None  # 1 where a completion token counts; None = all


def to_sequences(
    rollouts: list[Rollout], estimator: str, verify_baseline: str = "truth", drop_zero: bool = False
) -> list[Sequence]:
    """Rewards -> advantages, grouped by prompt; each token of a rollout carries its advantage.

    Rollouts rewarded message by message (SPOC) get message-wise RLOO advantages instead of `estimator`'s,
    each spread over its message's tokens (`verify_baseline`: see `advantages.message_rloo`). `drop_zero`: leave
    out the rollouts whose every token's advantage is 0 (`AlgorithmConfig.drop_zero_advantage`).
    """
    seqs = _advantages(rollouts, estimator, verify_baseline)
    return [s for s in seqs if any(s.advantages)] if drop_zero else seqs


def _advantages(rollouts: list[Rollout], estimator: str, verify_baseline: str) -> list[Sequence]:
    groups: dict[int, list[Rollout]] = {}
    for r in rollouts:
        groups.setdefault(r.prompt_index, []).append(r)
    if not groups:
        return []
    width = max(len(g) for g in groups.values())
    complete = [g for g in groups.values() if len(g) == width]  # a group cut by dropped rollouts is not comparable
    if message_wise(rollouts):
        pools = [advantages.message_rloo([r.message_rewards() for r in g], 1e-6, verify_baseline) for g in complete]
        return [
            Sequence(r.prompt_ids, r.completion_ids, r.logprobs, _spread(r, adv))
            for g, group_advantages in zip(complete, pools, strict=True)
            for r, adv in zip(g, group_advantages, strict=True)
        ]
    rewards = torch.tensor([[r.reward for r in g] for g in complete], dtype=torch.float64)
    adv = advantages.compute(estimator, rewards)
    return [
        Sequence(r.prompt_ids, r.completion_ids, r.logprobs, [float(adv[i, j])] * len(r.completion_ids))
        for i, g in enumerate(complete)
        for j, r in enumerate(g)
    ]


def _spread(r: Rollout, message_advantages: list[float]) -> list[float]:
    per_token = [0.0] * len(r.completion_ids)
    for m, a in zip(r.messages, message_advantages, strict=True):
        per_token[m.start : m.end] = [a] * (m.end - m.start)
    return per_token
