"""Losses of reward models: Bradley-Terry on scalar rewards, and Critic-RM's joint critique + reward loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def preference_probability(margin: float) -> float:
    """Bradley-Terry: the probability that a response is preferred, from its reward's margin over the other's
    (over 0: a lone reward model logit read as a probability). exp only of a non-positive number, which cannot
    overflow, so any logit gives a probability in [0, 1]."""
    if margin >= 0:
        return 1 / (1 + math.exp(-margin))
    z = math.exp(margin)
    return z / (1 + z)


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected), averaged over pairs: the preference's negative log-likelihood."""
    return -F.logsigmoid(chosen - rejected).mean()


def critic_weight(step: int, total_steps: int) -> float:
    """Critic-RM's weight on the reward loss: 0 at the first step (all critique LM loss), 1 at the last."""
    return min(1.0, step / max(total_steps - 1, 1))


def critic_rm(lm_loss: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - weight) * the critique's LM loss + weight * Bradley-Terry on the rewards predicted after the critiques."""
    return (1 - weight) * lm_loss + weight * bradley_terry(chosen, rejected)
