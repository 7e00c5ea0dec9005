"""Programmatic verifiers run in worker processes, each call under a hard timeout.

A scorer returns one reward per rollout, or a list of one reward per message (its count must match
the rollout's messages; the rollout's reward is then their mean). A scorer that raises, hangs or
returns the wrong count marks its rollout failed (reward = failure_reward) and is counted; pebble
kills a hung worker and starts another, so the loop never blocks. A scorer that returns NaN or inf
raises `RewardError`, which stops the run.
"""

from __future__ import annotations

import inspect
import math
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from pebble import ProcessPool

from relayrl.errors import TrainingError
from relayrl.orphans import die_with_parent
from relayrl.rollout import Rollout
from relayrl.schema import choice, non_negative, nonempty, positive, setting

RewardFn = Callable[..., float | list[float]]
"""(completion text, reference answer) -> a reward, or one per message; picklable (module-level or a dataclass).
One that also takes a `prompt` parameter (reward models, judges) is given the prompt's text too."""


class RewardError(TrainingError):
    """A reward function returned a non-finite reward. Unlike a scorer that raises or hangs (an unreachable judge,
    a hostile completion: counted, and the run goes on), this is a bug in the reward function, and a NaN or inf
    reward would pass silently through the advantages into the loss; so the executors re-raise it and the
    controller lets it end the run."""


def describe(scorer: RewardFn) -> str:
    """The reward function's module and qualified name (its class's, for a callable instance such as a judge)."""
    named = scorer if hasattr(scorer, "__qualname__") else type(scorer)
    return f"{named.__module__}.{named.__qualname__}"


def takes_prompt(scorer: RewardFn) -> bool:
    return "prompt" in inspect.signature(scorer).parameters


def reward_args(r: Rollout, with_prompt: bool) -> tuple:
    """What a scorer is called with for rollout `r` (`with_prompt`: `takes_prompt(scorer)`); a rollout paired
    with another sample (a pairwise judge's opponent) passes that sample's text last."""
    if not with_prompt:
        return (r.text, r.answer)
    return (r.text, r.answer, r.prompt, r.opponent) if r.opponent else (r.text, r.answer, r.prompt)


@dataclass
class RewardConfig:
    timeout: float = setting(5.0, gt=0, le=threading.TIMEOUT_MAX)  # seconds per call
    workers: int = setting(1, gt=0, le=1024)  # processes, all started at once: more would exhaust the machine
    failure_reward: float = 0.0
    # task: its verifier | reward_model: `model` | judge: `judge_url` or `judge_model_path`
    source: str = choice("task", "reward_model", "judge")
    model: str = ""  # source=reward_model: a reward-model folder (relayrl rm train)
    # source=reward_model, a Critic-RM folder: critiques averaged per response; 0: its own M
    critiques: int = non_negative(0)
    judge_url: str = ""  # source=judge: an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1
    judge_model: str = nonempty("judge")  # the model name sent to that endpoint
    judge_model_path: str = ""  # source=judge, instead of judge_url: a judge model (folder, hub id) run in-process
    judge_backend: str = choice("native", "vllm")  # what samples judge_model_path's replies (each worker its own)
    judge_kind: str = choice(
        "pointwise", "pairwise"
    )  # pointwise (a score) | pairwise (a preference between two responses)
    judge_against: str = choice(
        "reference", "sample"
    )  # pairwise: reference (`judge_reference`) | sample (another of the prompt's)
    judge_reference: str = "{answer}"  # pairwise: the reference response, over the task's reference answer
    judge_both_orders: bool = False  # pairwise: judge A-B and B-A and average (cancels position bias; 2x calls)
    judge_max_tokens: int = positive(256)

    @property
    def pairs_samples(self) -> bool:
        """Whether each rollout's reward is a pairwise judge's verdict against another sample of its prompt."""
        return self.source == "judge" and self.judge_against == "sample"


class VerifierScorer:
    def __init__(self, scorer: RewardFn, cfg: RewardConfig):
        self.scorer, self.cfg, self.with_prompt = scorer, cfg, takes_prompt(scorer)
        spawn, me = multiprocessing.get_context("spawn"), os.getpid()
        self.pool = ProcessPool(max_workers=cfg.workers, context=spawn, initializer=die_with_parent, initargs=(me,))
        # start the workers and import the scorer's module now, beside the generator's start-up: otherwise the first
        # step waits for both in turn (about 4 s each on 2 cores)
        self.pool.schedule(received, args=(scorer,))

    def score(self, rollouts: list[Rollout]) -> dict[str, float]:
        futures = [
            self.pool.schedule(self.scorer, args=reward_args(r, self.with_prompt), timeout=self.cfg.timeout)
            for r in rollouts
        ]
        counts = {"reward_timeouts": 0.0, "reward_errors": 0.0}
        for r, fut in zip(rollouts, futures, strict=True):
            try:
                assign_result(r, fut.result(), self.scorer)
            except RewardError:
                raise
            except FutureTimeout:
                r.reward, r.reward_failed = self.cfg.failure_reward, True
                counts["reward_timeouts"] += 1
            except Exception:
                r.reward, r.reward_failed = self.cfg.failure_reward, True
                counts["reward_errors"] += 1
        return counts

    def close(self) -> None:
        self.pool.stop()
        self.pool.join()


def received(scorer: RewardFn) -> None:
    """Nothing: a worker that unpickles `scorer` has imported what it needs."""


def assign_result(r: Rollout, result: float | list[float], scorer: RewardFn) -> None:
    """Set `r`'s reward (and its messages') from what `scorer` returned: a wrong count raises ValueError (a
    counted failure), a non-finite reward RewardError (fatal)."""
    rewards = [float(v) for v in result] if isinstance(result, list | tuple) else [float(result)]
    if (bad := next((v for v in rewards if not math.isfinite(v)), None)) is not None:
        raise RewardError(
            f"reward function {describe(scorer)} returned {bad} for prompt {r.prompt_index}, sample "
            f"{r.sample_index}: a reward must be finite (a NaN or inf would poison the advantages)"
        )
    if isinstance(result, list | tuple):
        if len(rewards) != len(r.messages):
            raise ValueError(f"{len(rewards)} rewards for {len(r.messages)} messages")
        for m, v in zip(r.messages, rewards, strict=True):
            m.reward = v
        r.reward = sum(rewards) / len(rewards)
    else:
        r.reward = rewards[0]
    r.reward += r.env_reward
    r.reward_failed = False
