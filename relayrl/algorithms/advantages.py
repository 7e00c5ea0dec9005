"""Advantage estimators over a (groups, samples) grid of rewards: one group per prompt."""

from __future__ import annotations

import statistics

import torch


def grpo(rewards: torch.Tensor, eps: float = 1e-6, scale: bool = True) -> torch.Tensor:
    """(r - group mean) / (group std + eps); the std is the unbiased one, as in DeepSeekMath."""
    centered = rewards - rewards.mean(-1, keepdim=True)
    return centered / (rewards.std(-1, keepdim=True) + eps) if scale else centered


def rloo(rewards: torch.Tensor) -> torch.Tensor:
    """r_i minus the mean of the other samples of the same prompt (leave-one-out baseline)."""
    n = rewards.shape[-1]
    if n < 2:
        raise ValueError("rloo needs at least 2 samples per prompt")
    return (rewards - rewards.mean(-1, keepdim=True)) * n / (n - 1)


def reinforce(rewards: torch.Tensor) -> torch.Tensor:
    """r minus the mean reward of the whole batch."""
    return rewards - rewards.mean()


ESTIMATORS = {"grpo": grpo, "rloo": rloo, "reinforce": reinforce}


def compute(name: str, rewards: torch.Tensor) -> torch.Tensor:
    return ESTIMATORS[name](rewards)


def message_rloo(samples: list[list[tuple[str, float]]], eps: float = 1e-6) -> list[list[float]]:
    """Message-wise RLOO (SPOC) for one prompt: `samples[i]` lists sample i's messages as (role, reward).

    A message's advantage is its reward minus the mean reward of the same role's messages in the *other*
    samples (leave-one-out: none of its own sample's, which follow from it), over the std of all the
    prompt's rewards for that role (unbiased, + eps). A role seen in fewer than two samples gets 0.
    """
    by_role: dict[str, list[tuple[int, float]]] = {}
    for i, messages in enumerate(samples):
        for role, reward in messages:
            by_role.setdefault(role, []).append((i, reward))
    std = {role: statistics.stdev(r for _, r in seen) for role, seen in by_role.items() if len(seen) > 1}

    def advantage(i: int, role: str, reward: float) -> float:
        others = [r for j, r in by_role[role] if j != i]
        return (reward - statistics.fmean(others)) / (std[role] + eps) if others else 0.0

    return [[advantage(i, role, reward) for role, reward in messages] for i, messages in enumerate(samples)]
