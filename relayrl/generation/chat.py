"""The chat model that `relayrl serve`, LLM judges run in-process, test-time scaling and SPOC's teacher share:
chat messages and sampling parameters in, the reply's text and token counts out. `relayrl serve` turns messages
into a prompt here and samples with the sampler's own steps (relayrl/serving/engine.py), so a judge run in-process
gives the replies and token counts that the same model behind `relayrl serve` gives (tests/test_serve.py)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from relayrl.generation.sampler import Completion, SamplingConfig, encode_prompt, sample_texts
from relayrl.models import load_model_and_tokenizer


class ChatModel:
    """Chat replies from a model: loaded from `name_or_path`, or one already loaded (`model`, `tokenizer`).
    `sampler` is what samples them: the model itself (the native sampler), or an engine holding its weights
    (vLLM's, `sampler_for`)."""

    def __init__(self, name_or_path: str, model=None, tokenizer=None, sampler=None):
        self.name = name_or_path
        self.model, self.tokenizer = (model, tokenizer) if model is not None else load_model_and_tokenizer(name_or_path)
        self.model.eval()
        self.sampler = sampler or self.model
        self.lock = threading.Lock()  # a server's threads and a judge's callers share one model and its cache

    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        """Through the chat template; a model without one sees the messages' contents, one per line."""
        if self.tokenizer.chat_template:
            return encode_prompt(self.tokenizer, [{"role": m["role"], "content": m["content"]} for m in messages])
        return encode_prompt(self.tokenizer, "\n".join(str(m["content"]) for m in messages))

    def reply(self, messages: Sequence[dict], sampling: SamplingConfig, seed: int = 0) -> Completion:
        """One reply to `messages` ({role, content} each), sampled with `seed`."""
        ids = self.prompt_ids(messages)
        with self.lock:
            (reply,) = sample_texts(self.sampler, self.tokenizer, [ids], sampling, torch.Generator().manual_seed(seed))
        return reply
