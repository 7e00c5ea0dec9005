"""The algorithms papers name, as the settings that reproduce them (docs/algorithms.md explains each choice).

Each is a list of dotted overrides for `relayrl train` (KL to the reference off throughout, relayrl's default, as in
DAPO and Dr. GRPO). relayrl takes one optimizer step per batch, so a PPO-style ratio differs from 1 only by the
rollouts' staleness and the engine's numerics, and its clip acts on those alone.
"""

from __future__ import annotations

NAMED: dict[str, list[str]] = {
    # LlamaRL (relayrl's default): GRPO's advantages, AIPO's truncated weight, a token mean
    "aipo": ["algorithm.advantage=grpo", "algorithm.loss=aipo", "algorithm.aggregation=token"],
    # DeepSeekMath: group-normalised advantages, PPO's clipped ratio, each sequence's token mean
    "grpo": ["algorithm.advantage=grpo", "algorithm.loss=ppo", "algorithm.aggregation=sequence"],
    # Liu et al. 2025: no std division, token sums over a constant (the generation budget)
    "dr_grpo": ["algorithm.advantage=dr_grpo", "algorithm.loss=ppo", "algorithm.aggregation=constant"],
    # Yu et al. 2025: the five fields of DAPO (clip-higher, token-level loss, dynamic sampling, overlong shaping)
    "dapo": [
        "algorithm.loss=ppo",
        "algorithm.clip_eps_high=0.28",
        "algorithm.aggregation=token",
        "algorithm.dynamic_sampling=true",
        "algorithm.overlong_buffer=8",
    ],
    # Zheng et al. 2025: the sequence ratio, clipped at 3e-4 below and 4e-4 above as in the paper
    "gspo": [
        "algorithm.loss=gspo",
        "algorithm.aggregation=sequence",
        "algorithm.clip_eps=0.0003",
        "algorithm.clip_eps_high=0.0004",
    ],
    # MiniMax-M1: no lower bound on the weight (clip_eps 1); the paper tunes the upper one without publishing it
    "cispo": [
        "algorithm.loss=cispo",
        "algorithm.aggregation=token",
        "algorithm.clip_eps=1",
        "algorithm.clip_eps_high=4",
    ],
    # Hu et al. 2025: batch-normalised advantages, PPO's clip, a token mean; and with the group mean removed first
    "reinforce_pp": ["algorithm.advantage=reinforce_pp", "algorithm.loss=ppo", "algorithm.aggregation=token"],
    "reinforce_pp_baseline": [
        "algorithm.advantage=reinforce_pp_baseline",
        "algorithm.loss=ppo",
        "algorithm.aggregation=token",
    ],
    # the paper's form: the KL to the reference in every token's reward, not in the loss (the coefficient is ours)
    "reinforce_pp_kl": [
        "algorithm.advantage=reinforce_pp",
        "algorithm.loss=ppo",
        "algorithm.aggregation=token",
        "algorithm.kl_in_reward=true",
        "algorithm.kl_coef=0.01",
    ],
    # PPO with a learned critic and GAE (Schulman et al. 2017; Ouyang et al. 2022 put kl_coef into the rewards:
    # add algorithm.kl_in_reward=true algorithm.kl_coef=0.02)
    "ppo_gae": ["algorithm.advantage=gae", "algorithm.loss=ppo", "algorithm.aggregation=token", "algorithm.lam=0.95"],
    # the same with the value head on the policy's backbone (one forward and backward; TRL's value-head PPO)
    "ppo_gae_shared": [
        "algorithm.advantage=gae",
        "algorithm.loss=ppo",
        "algorithm.aggregation=token",
        "algorithm.lam=0.95",
        "algorithm.value_model=shared",
    ],
    # Ahmadian et al. 2024: leave-one-out baseline, a policy gradient (PPO's ratio, 1 on policy)
    "rloo": ["algorithm.advantage=rloo", "algorithm.loss=ppo", "algorithm.aggregation=sequence"],
}
