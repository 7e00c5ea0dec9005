"""What DAPO does to a batch around its advantages: the soft overlong penalty, truncated-sample filtering, and the
informative-group test behind dynamic sampling. Pure functions of rollouts and numbers."""

from __future__ import annotations

from dataclasses import dataclass

from relayrl.rollout import Rollout


@dataclass(frozen=True)
class Overlong:
    """DAPO's overlong handling (AlgorithmConfig.overlong_*): `buffer` > 0 adds the soft penalty over the last
    `buffer` tokens of the `max_tokens` budget; `filter` leaves truncated samples out of the loss."""

    max_tokens: int
    buffer: int = 0
    factor: float = 1.0
    filter: bool = False


def overlong_penalty(length: int, max_tokens: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment, added to the reward: 0 up to max_tokens - buffer, then falling linearly to
    -factor at max_tokens, and -factor past it; a longer answer costs more, and a truncated one the most."""
    if buffer == 0:
        return 0.0
    over = length - (max_tokens - buffer)
    return -factor * min(max(over, 0), buffer) / buffer


def truncated(rollout: Rollout) -> bool:
    """Cut off by the token budget: its reward judges an unfinished answer (DAPO's overlong filtering masks it)."""
    return rollout.finish_reason == "length"


def informative(group: list[Rollout]) -> bool:
    """A group whose rewards differ: with every sample right, or every one wrong, a group-relative advantage is 0."""
    return len({r.reward for r in group}) > 1


def informative_groups(rollouts: list[Rollout], samples: int) -> list[list[Rollout]]:
    """DAPO's dynamic-sampling filter: the complete groups (all `samples` of a prompt) whose rewards differ."""
    return [g for g in groups(rollouts) if len(g) == samples and informative(g)]


def groups(rollouts: list[Rollout]) -> list[list[Rollout]]:
    """Rollouts by prompt, in the order their prompts first appear."""
    by_prompt: dict[int, list[Rollout]] = {}
    for r in rollouts:
        by_prompt.setdefault(r.prompt_index, []).append(r)
    return list(by_prompt.values())
