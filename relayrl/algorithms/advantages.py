"""Advantage estimators over a (groups, samples) grid of rewards: one group per prompt."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

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


def dr_grpo(rewards: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025): r - group mean, not divided by the group's std, which weighs the groups whose
    rewards barely differ (questions nearly always right or wrong) up the most."""
    return grpo(rewards, scale=False)


def reinforce(rewards: torch.Tensor) -> torch.Tensor:
    """r minus the mean reward of the whole batch."""
    return rewards - rewards.mean()


def reinforce_pp(rewards: torch.Tensor, tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++ (Hu et al. 2025): r normalised by the whole batch's mean and std, no critic and no group. The
    paper's advantage is per token, so its batch statistics are over tokens: a sample weighs its `tokens` (its
    trained token count, as OpenRLHF's masked statistics); the std is the population one."""
    return _batch_normalised(rewards, tokens, eps)


def reinforce_pp_baseline(rewards: torch.Tensor, tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++ with a baseline: r - group mean (which removes each prompt's difficulty), then normalised over
    the batch as `reinforce_pp`. A group of one sample, or of equal rewards, is centred to 0: its advantage is
    -mean/std of the batch's centred rewards over its tokens: 0 when each group's samples are of one length."""
    return _batch_normalised(dr_grpo(rewards), tokens, eps)


def _batch_normalised(values: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor:
    mean, std = token_statistics(values, weights)
    return (values - mean) / (std + eps)


def _whole(sums: list[float]) -> list[float]:
    """The batch's sums as they are: all of it is here."""
    return sums


def token_statistics(
    values: torch.Tensor, weights: torch.Tensor, total: Callable[[list[float]], list[float]] = _whole
) -> tuple[float, float]:
    """The `weights`-weighted mean and population std of `values` (in float64: a batch's tokens are many). `total`
    sums partial sums over wherever the rest of the batch is (the data-parallel ranks)."""
    values, weights = values.double(), weights.double()
    count, total_sum = total([float(weights.sum()), float((weights * values).sum())])
    if count == 0:  # no token in the batch: nothing is weighed, any statistics do
        return 0.0, 0.0
    mean = total_sum / count
    (squares,) = total([float((weights * (values - mean) ** 2).sum())])
    return mean, math.sqrt(squares / count)


def kl_returns(rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token returns with a KL penalty in every token's reward, undiscounted: at token t, the sum over the
    tokens s >= t that `mask` keeps of rewards_s - kl_coef kl_s (the reward to go, less the KL to go); 0 off the
    mask. (B, T) tensors."""
    return ((rewards - kl_coef * kl) * mask).flip(-1).cumsum(-1).flip(-1) * mask


def reinforce_pp_kl(
    rewards: list[torch.Tensor],
    kl: list[torch.Tensor],
    masks: list[torch.Tensor],
    kl_coef: float,
    eps: float = 1e-6,
    total: Callable[[list[float]], list[float]] = _whole,
) -> list[torch.Tensor]:
    """REINFORCE++ with the KL penalty in the reward (Hu et al. 2025, as OpenRLHF): the sequence's reward on its last
    token (group-centred first for the baseline variant), -kl_coef kl_t on every token (kl_t = log mu_t - log ref_t,
    the sampler's log-prob against the reference's), `kl_returns` of them, normalised over every token of the batch
    (mean, population std). The batch comes in parts, (B, T) each (micro-batches), and `total` adds the parts held
    elsewhere (ranks), so the statistics are the whole batch's however it is split."""
    returns = [kl_returns(r, k, m, kl_coef) for r, k, m in zip(rewards, kl, masks, strict=True)]
    flat = torch.cat([r.flatten() for r in returns]), torch.cat([m.flatten() for m in masks])
    mean, std = token_statistics(*flat, total)
    return [(r - mean) / (std + eps) * m for r, m in zip(returns, masks, strict=True)]


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) along each row of (B, T) per-token rewards and a
    critic's values: delta_t = r_t + gamma V_t+1 - V_t, A_t = delta_t + gamma lam A_t+1, past the last token 0.
    Only the positions `mask` keeps are steps (a row's prompt and padding are passed over). Returns (advantages,
    returns = advantages + values), 0 off the mask. lam = 1: the discounted return minus V; lam = 0: delta."""
    advantages = torch.zeros_like(values)
    next_value = next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        step = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(step, advantage, 0.0)
        next_value = torch.where(step, values[:, t], next_value)
        next_advantage = torch.where(step, advantage, next_advantage)
    return advantages, (advantages + values) * mask


ESTIMATORS = {"grpo": grpo, "rloo": rloo, "reinforce": reinforce, "dr_grpo": dr_grpo}
TOKEN_WEIGHTED = {"reinforce_pp": reinforce_pp, "reinforce_pp_baseline": reinforce_pp_baseline}


def compute(name: str, rewards: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """`name`'s advantages of a (groups, samples) grid of rewards; `tokens`: each sample's trained token count
    (default 1 each), which only the token-level batch statistics of REINFORCE++ read."""
    if name in TOKEN_WEIGHTED:
        return TOKEN_WEIGHTED[name](rewards, torch.ones_like(rewards) if tokens is None else tokens)
    return ESTIMATORS[name](rewards)


def message_rloo(
    samples: list[list[tuple[str, float]]], eps: float = 1e-6, verify_baseline: str = "truth"
) -> list[list[float]]:
    """Message-wise RLOO (SPOC) for one prompt: `samples[i]` lists sample i's messages as (role, reward).

    A message's advantage is its reward minus the mean reward of its pool's messages in the *other* samples
    (leave-one-out: none of its own sample's, which follow from it), over the std of all the prompt's rewards
    in that pool (unbiased, + eps); a pool seen in fewer than two samples gives 0. A pool is a role, and with
    `verify_baseline="truth"` a verification's pool is also keyed by the reward of the solution it judges:
    verdicts on right solutions are compared with verdicts on right ones only. With one pool per role
    ("role"), whichever verdict is right more often in the batch earns a positive advantage before the
    verifier can tell right from wrong, and the verdict drifts to it.
    """
    if verify_baseline not in ("truth", "role"):
        raise ValueError(f"spoc.verify_baseline must be 'truth' or 'role', got {verify_baseline!r}")
    keys = [_pool_keys(messages, verify_baseline == "truth") for messages in samples]
    pools: dict[tuple, list[tuple[int, float]]] = {}
    for i, messages in enumerate(samples):
        for key, (_, reward) in zip(keys[i], messages, strict=True):
            pools.setdefault(key, []).append((i, reward))
    std = {key: statistics.stdev(r for _, r in seen) for key, seen in pools.items() if len(seen) > 1}

    def advantage(i: int, key: tuple, reward: float) -> float:
        others = [r for j, r in pools[key] if j != i]
        return (reward - statistics.fmean(others)) / (std[key] + eps) if others else 0.0

    return [
        [advantage(i, key, reward) for key, (_, reward) in zip(keys[i], messages, strict=True)]
        for i, messages in enumerate(samples)
    ]


def _pool_keys(messages: list[tuple[str, float]], by_truth: bool) -> list[tuple]:
    keys, judged = [], None  # judged: the reward of the last solution, which a verification judges
    for role, reward in messages:
        keys.append((role, judged) if by_truth and role == "verification" else (role,))
        if role == "solution":
            judged = reward
    return keys
