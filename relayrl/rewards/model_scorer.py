"""A trained reward model (`relayrl rm train`, or any one-output sequence classifier) as a reward function.

A Critic-RM folder (`relayrl rm train kind=critic`) is recognised by its `critic_rm.json`: its reward is the mean
over M critiques it samples of the response, with a fixed seed, so a response's reward depends on its text only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from relayrl.rewards.critic_rm import CriticRewardModel, is_critic_rm


@lru_cache(maxsize=2)
def _load(path: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if is_critic_rm(path):
        return CriticRewardModel.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(path)


@lru_cache(maxsize=4096)
def _critic_score(path: str, prompt: str, completion: str, critiques: int, seed: int) -> tuple[float, int]:
    """Cached: test-time scaling asks for a reward, then for the tokens its critiques cost."""
    return _load(path).score(prompt, completion, critiques, seed)


@dataclass
class RewardModelScorer:
    """The model's scalar reward for prompt + completion; loaded once per reward worker process."""

    path: str
    max_length: int = 256  # a Critic-RM keeps the one it was trained with
    critiques: int = 0  # a Critic-RM: critiques averaged per response (M); 0: the folder's own `critic.critiques`
    seed: int = 0  # a Critic-RM: the seed its critiques are sampled with

    @torch.no_grad()
    def __call__(self, completion: str, answer: str, prompt: str = "") -> float:
        if is_critic_rm(self.path):
            return _critic_score(self.path, prompt, completion, self.critiques, self.seed)[0]
        from relayrl.training.reward_model import rewards

        model, tokenizer = _load(self.path)
        return float(rewards(model, tokenizer, [prompt + completion], self.max_length)[0])

    def tokens(self, completion: str, prompt: str = "") -> int:
        """The tokens the model reads (a Critic-RM: and writes) to score prompt + completion (test-time scaling
        counts them)."""
        if is_critic_rm(self.path):
            return _critic_score(self.path, prompt, completion, self.critiques, self.seed)[1]
        _, tokenizer = _load(self.path)
        return min(len(tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]), self.max_length)
