"""Advantage estimators over a (groups, samples) grid of rewards: one group per prompt."""

from __future__ import annotations

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
