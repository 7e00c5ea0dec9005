"""Gymnasium text environments as relayrl environments.

A Gymnasium environment whose actions and observations are strings (`gymnasium.spaces.Text`, or any) runs here
unchanged: `reset(seed=..., options={"prompt": ..., "answer": ...})` starts it on the item (the task's prompt is
the episode's first message; the observation `reset` returns is not shown), each policy turn is a `step(action)`
whose observation is the reply and whose reward is the turn's, and `terminated` or `truncated` ends the episode.

relayrl's environments are functions of the item and the turns (what makes a killed run resume exactly), and a
Gymnasium environment holds state: so every reply replays the episode on a fresh instance, seeded from the item.
That costs T(T+1)/2 steps for T turns, little for text environments, and requires the environment to be
deterministic given its seed, as Gymnasium asks of `reset(seed=...)`.
"""

from __future__ import annotations

import zlib

import gymnasium

from relayrl.environments.base import Environment, Reply
from relayrl.tasks.base import Item


class GymnasiumEnvironment(Environment):
    """`environment.name=gymnasium`, `environment.gym_id=<a registered id>`."""

    def respond(self, item: Item, turns: list[str]) -> Reply | None:
        env = gymnasium.make(self.cfg.gym_id)
        try:
            prompt = item.prompt if isinstance(item.prompt, str) else item.prompt[-1]["content"]
            env.reset(seed=zlib.crc32(prompt.encode()), options={"prompt": prompt, "answer": item.answer})
            for turn in turns:
                observation, reward, terminated, truncated, _ = env.step(turn)
                if terminated or truncated:
                    break
        finally:
            env.close()
        return Reply(str(observation), float(reward), done=terminated or truncated)
