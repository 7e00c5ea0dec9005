"""A trained reward model (`relayrl rm train`, or any one-output sequence classifier) as a reward function."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@lru_cache(maxsize=2)
def _load(path: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(path)


@dataclass
class RewardModelScorer:
    """The model's scalar reward for prompt + completion; loaded once per reward worker process."""

    path: str
    max_length: int = 256

    @torch.no_grad()
    def __call__(self, completion: str, answer: str, prompt: str = "") -> float:
        from relayrl.training.reward_model import rewards

        model, tokenizer = _load(self.path)
        return float(rewards(model, tokenizer, [prompt + completion], self.max_length)[0])
