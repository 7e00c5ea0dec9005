"""The one record that flows generator -> scorer -> trainer (token-in/token-out)."""

from __future__ import annotations

from dataclasses import dataclass, field

POLICY, ENVIRONMENT = "assistant", "environment"  # roles of an episode's messages; the environment's are not trained


@dataclass
class Message:
    """A span [start, end) of completion tokens, e.g. one SPOC solution or verification."""

    start: int
    end: int
    role: str = "assistant"
    reward: float | None = None


@dataclass
class Rollout:
    prompt_index: int  # position in the task's training stream: groups samples, fixes the data position
    sample_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]  # behaviour policy mu, one per completion token, at the sampling temperature
    version: int  # policy version that sampled it
    text: str
    finish_reason: str  # "stop" (eos or stop string) | "length"
    answer: str = ""  # the reference, so any scorer can see it
    messages: list[Message] = field(default_factory=list)
    reward: float | None = None
    reward_failed: bool = False
    replica: int = 0  # the generator replica that sampled it
    prompt: str = ""  # the prompt's text, for scorers that read it (reward models, judges)
    opponent: str = ""  # another sample of the same prompt, for a pairwise judge (`rewards.judge.pair_samples`)
    env_reward: float = 0.0  # an episode's per-turn rewards from its environment, added to the scorer's

    def __post_init__(self) -> None:
        if not self.messages:
            self.messages = [Message(0, len(self.completion_ids))]

    def loss_mask(self) -> list[float] | None:
        """1 on the tokens the policy wrote, 0 on an environment's (None: all the policy's)."""
        if all(m.role != ENVIRONMENT for m in self.messages):
            return None
        mask = [1.0] * len(self.completion_ids)
        for m in self.messages:
            if m.role == ENVIRONMENT:
                mask[m.start : m.end] = [0.0] * (m.end - m.start)
        return mask

    def message_rewards(self) -> list[tuple[str, float]]:
        """(role, reward) per message; a message without a reward of its own (a failed scorer) takes the rollout's."""
        return [(m.role, self.reward if m.reward is None else m.reward) for m in self.messages]


def replies(messages: list[Message]) -> int:
    """An episode's environment replies: one per tool call answered."""
    return sum(m.role == ENVIRONMENT for m in messages)


def message_wise(rollouts: list[Rollout]) -> bool:
    """Whether a scorer rewarded these rollouts message by message."""
    return any(m.reward is not None for r in rollouts for m in r.messages)
