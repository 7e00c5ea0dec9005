"""LLM-judge rewards through any OpenAI-compatible chat-completions endpoint (`relayrl serve` is one).

`PointwiseJudge` asks the judge to score a completion against the reference and parses the score; it is a
reward function like any verifier, so it runs in the reward worker pool under `reward.timeout`, and an
unreachable judge, an HTTP error or a reply without a score is a counted reward failure, never fatal.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from dataclasses import dataclass

SCORE_RE = re.compile(r"score\s*[:=]?\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_score(reply: str, low: float, high: float) -> float | None:
    """The last 'Score: N' in the reply, if it lies in [low, high]; None otherwise."""
    found = SCORE_RE.findall(reply)
    if not found:
        return None
    value = float(found[-1])
    return value if low <= value <= high else None


@dataclass
class PointwiseJudge:
    url: str  # e.g. http://127.0.0.1:8000/v1 (the /chat/completions route is appended)
    model: str = "judge"
    template: str = (
        "Question:\n{question}\n\nReference answer: {answer}\n\nResponse:\n{response}\n\n"
        "Rate the response from {low} to {high}. End with 'Score: N'."
    )
    low: float = 0.0
    high: float = 10.0
    max_tokens: int = 256
    timeout: float = 30.0
    api_key_env: str = "OPENAI_API_KEY"

    def ask(self, content: str) -> tuple[str, int]:
        """The judge's reply and the tokens it spent."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
        }
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        request = urllib.request.Request(
            self.url.rstrip("/") + "/chat/completions", json.dumps(body).encode(), headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            reply = json.loads(response.read())
        return reply["choices"][0]["message"]["content"], int(reply.get("usage", {}).get("total_tokens", 0))

    def score(self, question: str, response: str, answer: str) -> float:
        """The judge's score scaled to [0, 1]; a reply without a valid score raises (a counted failure)."""
        reply, _ = self.ask(
            self.template.format(question=question, answer=answer, response=response, low=self.low, high=self.high)
        )
        value = parse_score(reply, self.low, self.high)
        if value is None:
            raise ValueError(f"judge reply has no score in [{self.low}, {self.high}]: {reply[:200]!r}")
        return (value - self.low) / (self.high - self.low)

    def __call__(self, completion: str, answer: str, prompt: str = "") -> float:
        """A reward function: (completion text, reference answer, prompt text) -> reward."""
        return self.score(prompt, completion, answer)
