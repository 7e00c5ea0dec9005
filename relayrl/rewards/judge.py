"""LLM-judge rewards: a pointwise score or a pairwise preference, from an endpoint or a model run in-process.

A judge talks to any OpenAI-compatible chat-completions endpoint (`url`; `relayrl serve` is one) or to an HF
model that relayrl loads itself (`model_path`), through the same `ChatModel` that `relayrl serve` answers with,
so the two give the same replies and token counts and one parser reads both. A judge is a reward
function like any verifier: it runs in the reward worker pool under `reward.timeout`, and an unreachable
judge, an HTTP error or a reply without a verdict is a counted reward failure, never fatal.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache

from relayrl.generation.chat import ChatModel
from relayrl.generation.engines import GenerationConfig, engine_holding
from relayrl.generation.sampler import SamplingConfig
from relayrl.rewards.verifier import RewardConfig
from relayrl.rollout import Rollout

SCORE_RE = re.compile(r"score\s*[:=]?\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
WINNER_RE = re.compile(r"winner\s*[:=]?\s*\[*\s*(A|B)\b", re.IGNORECASE)


def parse_score(reply: str, low: float, high: float) -> float | None:
    """The last 'Score: N' in the reply, if it lies in [low, high]; None otherwise."""
    found = SCORE_RE.findall(reply)
    if not found:
        return None
    value = float(found[-1])
    return value if low <= value <= high else None


def parse_winner(reply: str) -> int | None:
    """The last 'Winner: A' (0) or 'Winner: B' (1) in the reply; None if there is none."""
    found = WINNER_RE.findall(reply)
    return None if not found else "AB".index(found[-1].upper())


@lru_cache(maxsize=2)
def local_chat(model_path: str, backend: str = "native") -> ChatModel:
    """A judge model loaded once per process (each reward worker loads its own), sampled by relayrl's sampler or
    by a vLLM engine of its own (`backend`), kept for the process's life."""
    chat = ChatModel(model_path)
    if backend != "native":
        chat.sampler = engine_holding(GenerationConfig(backend=backend), chat.model, chat.tokenizer)
    return chat


@dataclass
class ChatJudge:
    """Where a judge's replies come from: `url` (an endpoint), else `model_path` (loaded in-process), or an
    already loaded `chat` model (test-time scaling judging with the policy itself)."""

    url: str = ""  # e.g. http://127.0.0.1:8000/v1 (the /chat/completions route is appended)
    model: str = "judge"  # the model name sent to the endpoint
    model_path: str = ""  # a local folder, hub id or builtin, run by relayrl in this process
    backend: str = "native"  # what samples `model_path`'s replies: native | vllm
    max_tokens: int = 256
    temperature: float = 0.0
    timeout: float = 30.0
    api_key_env: str = "OPENAI_API_KEY"
    chat: ChatModel | None = field(default=None, repr=False, compare=False)

    def ask(self, content: str, seed: int = 0) -> tuple[str, int]:
        """The judge's reply and the tokens it spent (prompt and completion, as `usage.total_tokens`)."""
        messages = [{"role": "user", "content": content}]
        if not self.url:
            chat = self.chat or local_chat(self.model_path, self.backend)
            reply = chat.reply(messages, SamplingConfig(self.max_tokens, self.temperature), seed)
            return reply.text, reply.total_tokens
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": seed,
        }
        response = self._post(body)
        return response["choices"][0]["message"]["content"], int(response.get("usage", {}).get("total_tokens", 0))

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        request = urllib.request.Request(
            self.url.rstrip("/") + "/chat/completions", json.dumps(body).encode(), headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())


POINTWISE = (
    "Question:\n{question}\n\nReference answer: {answer}\n\nResponse:\n{response}\n\n"
    "Rate the response from {low} to {high}. End with 'Score: N'."
)
POINTWISE_NO_REFERENCE = (  # at test time there is no reference to show
    "Question:\n{question}\n\nResponse:\n{response}\n\nRate the response from {low} to {high}. End with 'Score: N'."
)


@dataclass
class PointwiseJudge(ChatJudge):
    template: str = POINTWISE
    low: float = 0.0
    high: float = 10.0

    def rate(self, question: str, response: str, answer: str = "") -> tuple[float | None, int]:
        """The judge's score scaled to [0, 1] (None if the reply has no valid score), and the tokens spent."""
        reply, tokens = self.ask(
            self.template.format(question=question, answer=answer, response=response, low=self.low, high=self.high)
        )
        value = parse_score(reply, self.low, self.high)
        return (None if value is None else (value - self.low) / (self.high - self.low)), tokens

    def __call__(self, completion: str, answer: str, prompt: str = "") -> float:
        """A reward function: (completion text, reference answer, prompt text) -> reward; no score raises."""
        value, _ = self.rate(prompt, completion, answer)
        if value is None:
            raise ValueError(f"judge reply has no score in [{self.low}, {self.high}]")
        return value


PAIRWISE = (
    "Question:\n{question}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\n"
    "Which response answers the question better? End with 'Winner: A' or 'Winner: B'."
)


@dataclass
class Verdict:
    preference: float | None  # for b over a: 0 (a better) .. 1 (b better); None if no order's reply parsed
    tokens: int
    unparsed: int  # replies without a verdict


@dataclass
class PairwiseJudge(ChatJudge):
    """Which of two responses is better. `both_orders` asks with each response first and averages the two
    verdicts, cancelling a judge's preference for a position (two disagreeing orders make a tie, 0.5)."""

    template: str = PAIRWISE
    reference: str = "{answer}"  # the response a completion is compared with when it has no opponent
    both_orders: bool = False

    def compare(self, question: str, a: str, b: str, seed: int = 0) -> Verdict:
        """The judge's preference for b over a (vote `seed` of several, when it samples)."""
        orders = [(a, b, False), (b, a, True)][: 2 if self.both_orders else 1]
        verdicts, tokens = [], 0
        for first, second, swapped in orders:
            reply, spent = self.ask(self.template.format(question=question, a=first, b=second), seed)
            tokens += spent
            winner = parse_winner(reply)
            if winner is not None:
                verdicts.append(1 - winner if swapped else winner)
        preference = sum(verdicts) / len(verdicts) if verdicts else None
        return Verdict(preference, tokens, len(orders) - len(verdicts))

    def __call__(self, completion: str, answer: str, prompt: str = "", opponent: str = "") -> float:
        """A reward function: the completion's win (1), tie (0.5) or loss (0) against another sample of the
        same prompt (`opponent`, see `pair_samples`), else against the reference; no verdict raises."""
        verdict = self.compare(prompt, completion, opponent or self.reference.format(answer=answer))
        if verdict.preference is None:
            raise ValueError("judge reply has no 'Winner: A' or 'Winner: B'")
        return 1.0 - verdict.preference


def make_judge(cfg: RewardConfig, kind: str, **fields) -> PointwiseJudge | PairwiseJudge:
    """The `kind` (pointwise | pairwise) judge that `reward.judge_*` names; `fields` set the rest (a template,
    a loaded chat model, a sampling temperature)."""
    where = dict(
        url=cfg.judge_url,
        model=cfg.judge_model,
        model_path=cfg.judge_model_path,
        backend=cfg.judge_backend,
        max_tokens=cfg.judge_max_tokens,
    )
    if kind == "pairwise":
        return PairwiseJudge(**where, reference=cfg.judge_reference, both_orders=cfg.judge_both_orders, **fields)
    return PointwiseJudge(**where, **fields)


def pair_samples(rollouts: list[Rollout]) -> None:
    """Give each rollout the next sample of its prompt (cyclically) as the opponent a pairwise judge compares it
    with; a prompt's only sample keeps none and is compared with the reference."""
    groups: dict[int, list[Rollout]] = defaultdict(list)
    for r in rollouts:
        groups[r.prompt_index].append(r)
    for group in groups.values():
        for r, other in zip(group, group[1:] + group[:1], strict=True):
            r.opponent = other.text if other is not r else ""
