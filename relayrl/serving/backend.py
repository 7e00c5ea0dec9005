"""What a generation backend takes (a `Job`) and gives back (`Update`s, or one `Failed`): the seam between the
HTTP app and whatever samples. The native engine (engine.py) and vLLM's (vllm_backend.py) are the two backends."""

from __future__ import annotations

import threading
from collections import deque
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


class QueuedBackend:
    """What both backends share: a line of jobs, and one scheduler thread that admits jobs from it and runs a
    step of generation while any row is in flight. A failed step fails its jobs, not the server."""

    def __init__(self, max_batch: int):
        self.max_batch = max_batch
        self._waiting: deque[Job] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"relayrl-{type(self).__name__}", daemon=True)

    def submit(self, job: Job) -> None:
        if job.rows > self.max_batch:
            raise JobRejected("n", f"{job.rows} samples in one request; this server batches {self.max_batch}")
        self._check(job)
        with self._wake:
            self._waiting.append(job)
            self._wake.notify()

    def stats(self) -> dict[str, int]:
        return {"rows": self._in_flight(), "waiting": len(self._waiting)}

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        for job in self._waiting:
            job.emit(Failed("the server is shutting down"))

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._waiting or self._in_flight() or self._closed):
                    self._wake.wait()
                if self._closed:
                    return
                admitted = self._admit()
            try:
                self._step(admitted)
            except Exception as e:
                jobs = {id(j): j for j in [*self._running_jobs(), *admitted]}
                for job in jobs.values():
                    job.emit(Failed(f"generation failed: {type(e).__name__}: {e}"))
                self._drop_all()

    def _check(self, job: Job) -> None:
        """Raise JobRejected if this backend can never run `job`."""

    def _admit(self) -> list[Job]:
        """Jobs taken from the line now (under the lock)."""
        raise NotImplementedError

    def _step(self, admitted: list[Job]) -> None:
        """Add the admitted jobs' rows, drop cancelled ones, generate a step and emit its updates."""
        raise NotImplementedError

    def _in_flight(self) -> int:
        """Rows generating."""
        raise NotImplementedError

    def _running_jobs(self) -> list[Job]:
        raise NotImplementedError

    def _drop_all(self) -> None:
        """Forget every row in flight (after a failed step)."""
        raise NotImplementedError
