"""One request's generation as a route awaits it: a job handed to the backend, its updates as they come (within
the request's deadline), what it cost, and its rows cancelled once nobody reads them any more."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from relayrl.serving.backend import Backend, Failed, Job, JobRejected, TokenLogprob, Update
from relayrl.serving.errors import APIError
from relayrl.serving.schemas import Usage


@dataclass
class Sampled:
    """One choice, whole."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


class Generation:
    def __init__(self, backend: Backend, timeout: float, **job):
        """Submit the job now, so that a request the backend can never run is a 400 before any response starts."""
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Update | Failed] = asyncio.Queue()
        self.deadline, self.timeout = loop.time() + timeout, timeout

        def emit(update: Update | Failed) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop is closed: the server is stopping
                loop.call_soon_threadsafe(self.queue.put_nowait, update)

        self.job = Job(**job, emit=emit)
        self.usage = Usage(prompt_tokens=sum(map(len, self.job.prompts)))
        try:
            backend.submit(self.job)
        except JobRejected as e:
            raise APIError(400, f"{e.param}: {e}", e.param) from None

    async def updates(self) -> AsyncIterator[Update]:
        """The job's updates until every row is over; cancels the job however the reading ends (a client gone, a
        timeout, a failure)."""
        left = self.job.rows
        try:
            while left:
                try:
                    update = await asyncio.wait_for(self.queue.get(), self.deadline - asyncio.get_running_loop().time())
                except TimeoutError:
                    message = f"the request took longer than {self.timeout:g} s (relayrl serve --timeout)"
                    raise APIError(504, message, code="timeout") from None
                if isinstance(update, Failed):
                    raise APIError(500, update.error)
                if update.finish_reason:
                    left -= 1
                    self.usage.completion_tokens += update.completion_tokens
                yield update
        finally:
            self.job.cancelled.set()


async def collect(updates: AsyncIterator[Update]) -> dict[int, Sampled]:
    """Each choice whole, by index."""
    choices: dict[int, Sampled] = {}
    async for u in updates:
        choice = choices.setdefault(u.index, Sampled())
        choice.text += u.text
        choice.logprobs += u.logprobs
        choice.finish_reason = u.finish_reason or choice.finish_reason
    return dict(sorted(choices.items()))
