"""Multi-turn episodes, token in and token out: the policy samples a turn, the environment answers in tokens that
join the context, until the environment ends the episode or a limit does (docs/environments.md).

Every active episode's next turn is sampled in one batch (any engine: `sample(contexts, cfg, turn)`), so an episode
costs the engine one call per turn, not per episode. Nothing is re-tokenized: the policy's sampled ids and their
log-probabilities are kept as they were sampled; the environment's replies are tokenized once and carry log-prob 0
(they are masked out of the loss: `Rollout.loss_mask`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from relayrl.environments.base import Environment
from relayrl.generation.sampler import Sample, SamplingConfig
from relayrl.rollout import ENVIRONMENT, POLICY, Message, replies
from relayrl.tasks.base import Item

SampleFn = Callable[[list[list[int]], SamplingConfig, int], list[Sample]]
"""(contexts, sampling, turn) -> one Sample per context: an engine's `sample` with a seed that `turn` varies."""


@dataclass
class Episode:
    completion_ids: list[int] = field(default_factory=list)  # the policy's and the environment's, in order
    logprobs: list[float] = field(default_factory=list)  # mu of the policy's tokens; 0 for the environment's
    messages: list[Message] = field(default_factory=list)
    finish_reason: str = "length"  # stop: the environment or the policy ended it | length: a token budget | turns
    env_reward: float = 0.0  # the sum of the environment's per-turn rewards
    turns: list[str] = field(default_factory=list)  # the policy's turns, as the environment read them

    @property
    def tool_calls(self) -> int:
        return replies(self.messages)


def run_episodes(
    sample: SampleFn,
    tokenizer,
    env: Environment,
    items: list[Item],
    prompts: list[list[int]],
    cfg: SamplingConfig,
) -> list[Episode]:
    """One episode per (item, prompt ids) pair. A turn has `cfg.max_new_tokens` tokens at most, an episode
    `env.cfg.max_episode_tokens` (policy and environment) and `env.cfg.max_turns` policy turns; an episode that
    reaches a limit before the environment ends it is cut there (finish_reason "length" or "turns"): its reward
    judges what it wrote."""
    max_turns, max_tokens = env.cfg.max_turns, episode_tokens(env, cfg)
    turn_cfg = dataclasses.replace(cfg, stop_strings=(*cfg.stop_strings, *env.format.stop_strings))
    episodes = [Episode() for _ in items]
    active = list(range(len(items)))
    for turn in range(max_turns):
        if not active:
            break
        contexts = [prompts[i] + episodes[i].completion_ids for i in active]
        budget = min(cfg.max_new_tokens, max(max_tokens - len(episodes[i].completion_ids) for i in active))
        samples = sample(contexts, dataclasses.replace(turn_cfg, max_new_tokens=budget), turn)
        last = turn + 1 == max_turns
        active = [
            i
            for i, s in zip(active, samples, strict=True)
            if _advance(episodes[i], s, tokenizer, env, items[i], max_tokens, last)
        ]
    return episodes


def episode_tokens(env: Environment, cfg: SamplingConfig) -> int:
    """An episode's token budget, policy's and environment's tokens together."""
    return env.cfg.max_episode_tokens or env.cfg.max_turns * cfg.max_new_tokens


def _advance(ep: Episode, s: Sample, tokenizer, env: Environment, item: Item, max_tokens: int, last: bool) -> bool:
    """Add a sampled turn and the environment's reply to `ep`; whether the episode goes on (`last`: the turn was
    the last one allowed, so a reply would have no turn after it)."""
    room = max_tokens - len(ep.completion_ids)
    ids, lps = s.completion_ids[:room], s.logprobs[:room]
    _append(ep, ids, lps, POLICY)
    if s.finish_reason == "length" or len(ids) < len(s.completion_ids):
        ep.finish_reason = "length"
        return False
    ep.turns.append(tokenizer.decode(ids, skip_special_tokens=True))
    reply = env.respond(item, list(ep.turns))
    if reply is None:
        ep.finish_reason = "stop"
        return False
    ep.env_reward += reply.reward
    if reply.done:
        ep.finish_reason = "stop"
        return False
    if last:
        ep.finish_reason = "turns"
        return False
    after_eos = bool(ids) and ids[-1] == tokenizer.eos_token_id
    answer = env.format.reply(tokenizer, reply.text[: env.cfg.reply_chars], after_eos)
    if len(ep.completion_ids) + len(answer) >= max_tokens:  # no room for the reply and a turn after it
        ep.finish_reason = "length"
        return False
    _append(ep, answer, [0.0] * len(answer), ENVIRONMENT)
    return True


def _append(ep: Episode, ids: list[int], logprobs: list[float], role: str) -> None:
    start = len(ep.completion_ids)
    ep.completion_ids += ids
    ep.logprobs += logprobs
    ep.messages.append(Message(start, len(ep.completion_ids), role))
