"""What an environment is: a plain class that answers the policy's turns (docs/environments.md).

An episode is a conversation. The task's prompt opens it; the policy writes a turn, which ends at one of the
environment's stop strings (a tool call's end), at the end-of-sequence token, or at the turn's token budget; the
environment answers it with a `Reply` (a tool's result, feedback) or ends the episode with None. The environment's
tokens go into the context the policy continues from, and are masked out of the loss. Rewards come from the task's
scorer on the whole transcript, plus any `Reply.reward` given along the way.

An environment is a function of the item and the policy's turns so far, nothing else: the same turns, the same
answers. That keeps episodes reproducible, so a killed run resumes exactly (its generator replays the batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from relayrl.environments.tools import ToolFormat, make_format
from relayrl.sandbox.execute import SandboxConfig
from relayrl.schema import choice, non_negative, positive, setting
from relayrl.tasks.base import Item


@dataclass(frozen=True)
class Reply:
    text: str  # what the environment says: a tool's output or feedback (the tool format renders it into tokens)
    reward: float = 0.0  # added to the episode's reward (a per-turn reward); 0 for most tools
    done: bool = False  # the episode ends here, with this reward and without the text


class Environment:
    """Subclass it and write `respond`; `self.format` parses the `tools` it names from a turn and renders replies
    (tags, or the chat template's tool calls: `EnvironmentConfig.tool_format`)."""

    tools: tuple[str, ...] = ()

    def __init__(self, cfg: EnvironmentConfig | None = None):
        self.cfg = cfg or EnvironmentConfig()
        self.format: ToolFormat = make_format(self.cfg.tool_format, self.tools)

    def respond(self, item: Item, turns: list[str]) -> Reply | None:
        """The answer to the policy's last turn, `turns[-1]` (all its turns so far, oldest first); None ends the
        episode (as a `Reply` with `done` does, with a last reward)."""
        raise NotImplementedError

    def demonstration(self, item: Item) -> list[tuple[str, str]] | None:
        """A worked episode for the supervised warm start, as (role, text) pairs (`POLICY` or `ENVIRONMENT`, the
        latter a reply's text), or None: the task's own solution is the demonstration."""
        return None


@dataclass
class EnvironmentConfig:
    """Multi-turn episodes (docs/environments.md). name "": single-turn, as without an environment."""

    name: str = ""  # calculator | python | code_feedback | gymnasium | "package.module:Class" (an Environment)
    gym_id: str = ""  # name=gymnasium: the registered id of a Gymnasium text environment (docs/environments.md)
    tool_format: str = choice("tags", "chat")  # tags: <name>...</name>; chat: the chat template's tool calls
    max_turns: int = setting(4, ge=1, le=64)  # policy turns per episode
    max_episode_tokens: int = non_negative(0)  # policy and environment tokens; 0: max_turns x rollout.max_new_tokens
    demonstrations: float = setting(1.0, ge=0, le=1)  # share of warm-start examples that are the environment's
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)  # where the python and code tools run programs
    reply_chars: int = positive(400)  # a tool's output is cut here (the policy's context is small)

    def rules(self) -> Iterator[tuple[str, str]]:
        if self.name and ":" not in self.name and self.name not in BUILTIN:
            yield "name", f"must be one of {', '.join(BUILTIN)} or 'package.module:Class'; got {self.name!r}"
        if self.name == "gymnasium" and not self.gym_id:
            yield "gym_id", "environment.name=gymnasium needs the id of a registered Gymnasium environment"


BUILTIN = {  # name -> the class it builds
    "calculator": "relayrl.environments.calculator:Calculator",
    "python": "relayrl.environments.calculator:PythonTool",
    "code_feedback": "relayrl.environments.code_feedback:CodeFeedback",
    "gymnasium": "relayrl.environments.gym_adapter:GymnasiumEnvironment",
}
