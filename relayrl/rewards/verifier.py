"""Programmatic verifiers run in worker processes, each call under a hard timeout.

A scorer that raises or hangs marks its rollout failed (reward = failure_reward) and is
counted; pebble kills a hung worker and starts another, so the loop never blocks.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from pebble import ProcessPool

from relayrl.rollout import Rollout
from relayrl.tasks.base import Scorer


@dataclass
class RewardConfig:
    timeout: float = 5.0  # seconds per call
    workers: int = 1
    failure_reward: float = 0.0


class VerifierScorer:
    def __init__(self, scorer: Scorer, cfg: RewardConfig):
        self.scorer, self.cfg = scorer, cfg
        self.pool = ProcessPool(max_workers=cfg.workers, context=multiprocessing.get_context("spawn"))

    def score(self, rollouts: list[Rollout]) -> dict[str, float]:
        futures = [self.pool.schedule(self.scorer, args=(r.text, r.answer), timeout=self.cfg.timeout) for r in rollouts]
        counts = {"reward_timeouts": 0.0, "reward_errors": 0.0}
        for r, fut in zip(rollouts, futures, strict=True):
            try:
                r.reward, r.reward_failed = float(fut.result()), False
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
