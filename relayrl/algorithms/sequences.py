"""Scored rollouts -> what the trainer consumes: token ids with an advantage on every completion token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from relayrl.algorithms import advantages
from relayrl.algorithms.shaping import Overlong, groups, overlong_penalty, truncated
from relayrl.rollout import Rollout, message_wise


@dataclass
class Sequence:
    """What the trainer consumes: ids in, per-token targets and weights out."""

    prompt_ids: list[int]
    completion_ids: list[int]
    behaviour_logprobs: list[float] | None = None  # mu; None for supervised data
    advantages: list[float] | None = None  # one per completion token
    loss_mask: list[float] | None = None  # 1 where a completion token counts; None = all
    staleness: int = 0  # versions between the policy that sampled it and the one trained on it
    # per completion token (the reward on the last), for the trainer to turn into advantages: a critic's (gae), or
    # REINFORCE++'s with the KL in the reward (kl_in_reward; group-centred for reinforce_pp_baseline)
    rewards: list[float] | None = None


def to_sequences(
    rollouts: list[Rollout],
    estimator: str,
    verify_baseline: str = "truth",
    drop_zero: bool = False,
    overlong: Overlong | None = None,
    version: int | None = None,
) -> list[Sequence]:
    """Rewards -> advantages, grouped by prompt; each token of a rollout carries its advantage.

    Rollouts rewarded message by message (SPOC) get message-wise RLOO advantages instead of `estimator`'s,
    each spread over its message's tokens (`verify_baseline`: see `advantages.message_rloo`). `drop_zero`: leave
    out the rollouts whose every token's advantage is 0 (`AlgorithmConfig.drop_zero_advantage`). `overlong`:
    DAPO's soft length penalty on the rewards the advantages see (not on the rollouts' own), and truncated
    rollouts left out after their group's advantages are computed. `version`: the trainer's, which each
    sequence's staleness is counted from (None: 0).
    """
    if estimator == "gae":  # the trainer's critic turns each rollout's reward, on its last token, into advantages
        pairs = [(r, None, _on_last(r, _shaped(r, overlong))) for r in rollouts]
    else:
        pairs = _advantages(rollouts, estimator, verify_baseline, overlong)
    seqs = [
        (r, Sequence(r.prompt_ids, r.completion_ids, r.logprobs, adv, r.loss_mask(), _staleness(r, version), rw))
        for r, adv, rw in pairs
    ]
    if overlong and overlong.filter:
        seqs = [(r, s) for r, s in seqs if not truncated(r)]
    return [s for _, s in seqs if not drop_zero or any(s.advantages)]


def _advantages(
    rollouts: list[Rollout], estimator: str, verify_baseline: str, overlong: Overlong | None
) -> list[tuple[Rollout, list[float], list[float] | None]]:
    """Each rollout's per-token advantages, and for REINFORCE++ its per-token rewards (`Sequence.rewards`)."""
    by_prompt = groups(rollouts)
    if not by_prompt:
        return []
    width = max(len(g) for g in by_prompt)
    complete = [g for g in by_prompt if len(g) == width]  # a group cut by dropped rollouts is not comparable
    if message_wise(rollouts):
        pools = [advantages.message_rloo([r.message_rewards() for r in g], 1e-6, verify_baseline) for g in complete]
        return [
            (r, _spread(r, adv), None)
            for g, group_advantages in zip(complete, pools, strict=True)
            for r, adv in zip(g, group_advantages, strict=True)
        ]
    rewards = torch.tensor([[_shaped(r, overlong) for r in g] for g in complete], dtype=torch.float64)
    tokens = torch.tensor([[len(r.completion_ids) for r in g] for g in complete], dtype=torch.float64)
    adv = advantages.compute(estimator, rewards, tokens)
    # REINFORCE++'s rewards (group-centred with the baseline): with kl_in_reward the trainer makes per-token returns
    reinforce_pp = estimator in advantages.TOKEN_WEIGHTED
    base = advantages.dr_grpo(rewards) if estimator == "reinforce_pp_baseline" else rewards
    return [
        (r, [float(adv[i, j])] * len(r.completion_ids), _on_last(r, float(base[i, j])) if reinforce_pp else None)
        for i, g in enumerate(complete)
        for j, r in enumerate(g)
    ]


def _staleness(r: Rollout, version: int | None) -> int:
    return 0 if version is None else version - r.version


def _shaped(r: Rollout, overlong: Overlong | None) -> float:
    if overlong is None:
        return r.reward
    return r.reward + overlong_penalty(len(r.completion_ids), overlong.max_tokens, overlong.buffer, overlong.factor)


def _on_last(r: Rollout, reward: float) -> list[float]:
    return [0.0] * (len(r.completion_ids) - 1) + [reward] if r.completion_ids else []


def _spread(r: Rollout, message_advantages: list[float]) -> list[float]:
    per_token = [0.0] * len(r.completion_ids)
    for m, a in zip(r.messages, message_advantages, strict=True):
        per_token[m.start : m.end] = [a] * (m.end - m.start)
    return per_token
