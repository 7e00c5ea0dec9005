"""Programmatic verifiers run in worker processes, each call under a hard timeout.

A scorer returns one reward per rollout, or a list of one reward per message (its count must match
the rollout's messages; the rollout's reward is then their mean). A scorer that raises, hangs or
returns the wrong count marks its rollout failed (reward = failure_reward) and is counted; pebble
kills a hung worker and starts another, so the loop never blocks.
"""

from __future__ import annotations

import inspect
import multiprocessing
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from pebble import ProcessPool

from relayrl.rollout import Rollout

RewardFn = Callable[..., float | list[float]]
"""(completion text, reference answer) -> a reward, or one per message; picklable (module-level or a dataclass).
One that also takes a `prompt` parameter (reward models, judges) is given the prompt's text too."""


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
    timeout: float = 5.0  # seconds per call
    workers: int = 1
    failure_reward: float = 0.0
    source: str = "task"  # task (its verifier) | reward_model (`model`) | judge (`judge_url` or `judge_model_path`)
    model: str = ""  # source=reward_model: a reward-model folder (relayrl rm train)
    critiques: int = 0  # source=reward_model, a Critic-RM folder: critiques averaged per response; 0: its own M
    judge_url: str = ""  # source=judge: an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1
    judge_model: str = "judge"  # the model name sent to that endpoint
    judge_model_path: str = ""  # source=judge, instead of judge_url: a judge model (folder, hub id) run in-process
    judge_kind: str = "pointwise"  # pointwise (a score) | pairwise (a preference between two responses)
    judge_against: str = "reference"  # pairwise: reference (`judge_reference`) | sample (another of the prompt's)
    judge_reference: str = "{answer}"  # pairwise: the reference response, over the task's reference answer
    judge_both_orders: bool = False  # pairwise: judge A-B and B-A and average (cancels position bias; 2x calls)
    judge_max_tokens: int = 256

    @property
    def pairs_samples(self) -> bool:
        """Whether each rollout's reward is a pairwise judge's verdict against another sample of its prompt."""
        return self.source == "judge" and self.judge_against == "sample"


class VerifierScorer:
    def __init__(self, scorer: RewardFn, cfg: RewardConfig):
        self.scorer, self.cfg, self.with_prompt = scorer, cfg, takes_prompt(scorer)
        self.pool = ProcessPool(max_workers=cfg.workers, context=multiprocessing.get_context("spawn"))

    def score(self, rollouts: list[Rollout]) -> dict[str, float]:
        futures = [
            self.pool.schedule(self.scorer, args=reward_args(r, self.with_prompt), timeout=self.cfg.timeout)
            for r in rollouts
        ]
        counts = {"reward_timeouts": 0.0, "reward_errors": 0.0}
        for r, fut in zip(rollouts, futures, strict=True):
            try:
                assign_result(r, fut.result())
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


def assign_result(r: Rollout, result: float | list[float]) -> None:
    if isinstance(result, list | tuple):
        rewards = [float(v) for v in result]
        if len(rewards) != len(r.messages):
            raise ValueError(f"{len(rewards)} rewards for {len(r.messages)} messages")
        for m, v in zip(r.messages, rewards, strict=True):
            m.reward = v
        r.reward = sum(rewards) / len(rewards)
    else:
        r.reward = float(result)
    r.reward_failed = False
