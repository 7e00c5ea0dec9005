"""Tool calls in the policy's text, and replies in the environment's tokens: two formats.

`TagFormat` is for models without a chat template (relayrl's tiny ones): a call is `<calc>2+3</calc>` (any name the
environment declares), its reply `<out>5</out>`. `ChatFormat` is the Hermes/Qwen convention that Hugging Face chat
templates render for `tools=`: a call is `<tool_call>{"name": "calc", "arguments": {"expression": "2+3"}}</tool_call>`
and the reply is a `tool` message rendered by the tokenizer's own chat template, followed by the assistant's
generation prompt, so a chat model reads its tool results as it was trained to.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Protocol

MARK = "\x00relayrl-turn\x00"  # stands for the policy's turn when the chat template is rendered around it


@dataclass(frozen=True)
class ToolCall:
    name: str
    argument: str  # the tag's text, or the call's one argument (its JSON, when it has several)


class ToolFormat(Protocol):
    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Where a turn that calls a tool ends, so the environment can answer it."""

    def parse(self, turn: str) -> ToolCall | None:
        """The turn's last complete tool call, or None."""

    def call(self, name: str, argument: str) -> str:
        """A call as the policy writes it (demonstrations)."""

    def reply(self, tokenizer, text: str, after_eos: bool) -> list[int]:
        """The token ids of a reply of `text` to a turn (`after_eos`: the turn ended with the end-of-sequence
        token)."""


@dataclass(frozen=True)
class TagFormat:
    tools: tuple[str, ...] = ("calc", "python")

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return tuple(f"</{t}>" for t in self.tools)

    def parse(self, turn: str) -> ToolCall | None:
        names = "|".join(re.escape(t) for t in self.tools)
        calls = re.findall(rf"<({names})>(.*?)</\1>", turn, flags=re.DOTALL)
        return ToolCall(*calls[-1]) if calls else None

    def call(self, name: str, argument: str) -> str:
        return f"<{name}>{argument}</{name}>"

    def render(self, text: str) -> str:
        return f"<out>{text}</out>"

    def reply(self, tokenizer, text: str, after_eos: bool) -> list[int]:
        return tokenizer(self.render(text), add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class ChatFormat:
    open: str = "<tool_call>"
    close: str = "</tool_call>"

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.close,)

    def parse(self, turn: str) -> ToolCall | None:
        calls = re.findall(re.escape(self.open) + r"(.*?)" + re.escape(self.close), turn, flags=re.DOTALL)
        if not calls:
            return None
        try:
            call = json.loads(calls[-1])
            name, arguments = str(call["name"]), call.get("arguments", {})
        except (ValueError, KeyError, TypeError):
            return ToolCall("", calls[-1].strip())  # malformed: the environment answers it with an error
        if isinstance(arguments, dict) and len(arguments) == 1:
            (arguments,) = arguments.values()
        return ToolCall(name, arguments if isinstance(arguments, str) else json.dumps(arguments))

    def call(self, name: str, argument: str) -> str:
        return f"{self.open}{json.dumps({'name': name, 'arguments': {'input': argument}})}{self.close}"

    def reply(self, tokenizer, text: str, after_eos: bool) -> list[int]:
        """What the chat template writes after an assistant turn and before the next one's content: the turn's end,
        the tool message, and the generation prompt; without the end-of-sequence token the turn already holds."""
        rendered = _template(tokenizer, [{"role": "tool", "content": text}])
        if rendered is None:  # a template without a tool role: the result comes as the user's message
            rendered = _template(tokenizer, [{"role": "user", "content": f"Tool result:\n{text}"}])
        if after_eos and tokenizer.eos_token and rendered.startswith(tokenizer.eos_token):
            rendered = rendered[len(tokenizer.eos_token) :]
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def _template(tokenizer, after: list[dict]) -> str | None:
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": MARK}, *after]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception:  # jinja raises what the template's author chose (e.g. an unknown role)
        return None
    return text.split(MARK, 1)[1] if MARK in text else None


def make_format(name: str, tools: tuple[str, ...]) -> ToolFormat:
    return ChatFormat() if name == "chat" else TagFormat(tools)
