"""What a generation backend takes (a `Job`) and gives back (`Update`s, or one `Failed`): the seam between the
HTTP app and whatever samples. The native engine (engine.py) is one backend; a vLLM one would be another."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the most likely tokens and their log-probabilities, best first


@dataclass
class Update:
    """News of one row (`index` = prompt * n + sample): text that may now be shown, the log-probabilities of the
    tokens sampled since the last update, and once the row is over its finish reason and token count."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (EOS or a stop string) or "length"
    completion_tokens: int = 0  # on the last update: every token sampled, EOS included


@dataclass
class Failed:
    """The job's generation raised: no more updates will come."""

    error: str


@dataclass
class Job:
    """n samples of each prompt with one set of sampling parameters; `emit` is called from the backend's thread."""

    prompts: list[list[int]]
    n: int
    max_tokens: int
    temperature: float  # 0: greedy
    top_p: float
    stop: tuple[str, ...]  # a row ends at the first of these in its text, which is cut before it
    seed: int | None  # None: a fresh random seed
    logprobs: int | None  # None: none; k: each sampled token's log-probability and the k likeliest
    stream: bool  # text as it is written; otherwise once per row, when it ends
    emit: Callable[[Update | Failed], None]
    cancelled: threading.Event = field(default_factory=threading.Event)  # a client gone or out of time

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n


class JobRejected(ValueError):
    """A job this backend can never run (too many rows, too much memory): the request's fault, named by field."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class Backend(Protocol):
    context_length: int  # prompt + completion tokens a row may hold
    max_batch: int  # rows it generates at once: a job's prompts x n at most

    def submit(self, job: Job) -> None:
        """Queue the job (raising JobRejected if it can never run); its updates arrive through `job.emit`."""

    def stats(self) -> dict[str, int]:
        """What it is doing now: rows generating, jobs waiting."""

    def close(self) -> None: ...
