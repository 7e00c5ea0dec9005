"""SPOC's message-wise rewards, and the writers of verification text for PairSFT data.

A solution message earns 1 if its answer is right; a verification earns 1 if its verdict matches the
truth about the solution before it (Yes after a right one, No after a wrong one; no verdict earns 0).
The rewards come from `SpocFormat.parse`, the rule that also split the rollout into messages, so the
count always matches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from relayrl.generation.messages import SpocFormat
from relayrl.tasks.base import Item, Scorer


@dataclass(frozen=True)
class SpocRewards:
    """Picklable: it runs in the reward worker processes with only (completion text, answer)."""

    format: SpocFormat
    correct: Scorer  # the task's scorer of one solution: 1.0 = right

    def messages(self, text: str, answer: str) -> list[tuple[str, float]]:
        """(role, reward) per message of the completion."""
        out: list[tuple[str, float]] = []
        right = False  # is the latest solution right
        for span in self.format.parse(text):
            message = text[span.start : span.end]
            if span.role == "solution":
                right = self.correct(message, answer) >= 1.0
                out.append((span.role, float(right)))
            else:
                out.append((span.role, float(self.format.verdict(message) == right)))
        return out

    def __call__(self, text: str, answer: str) -> list[float]:
        return [reward for _, reward in self.messages(text, answer)]

    def final(self, text: str, answer: str) -> float:
        """The last solution's reward: SPOC's answer is the one it ends on."""
        return next(reward for role, reward in reversed(self.messages(text, answer)) if role == "solution")


VerificationWriter = Callable[[Item, str, bool], str]
"""(item, a sampled solution, whether it is right) -> the critique inside its verification message."""


def step_template(item: Item, solution: str, correct: bool) -> str:
    """For tasks with checkable steps, one per line (the arithmetic task): the first line of the reference
    solution that the attempt does not reproduce, written out right. Nothing to say about a right one."""
    if correct:
        return ""
    attempt = [line.strip() for line in solution.strip().splitlines()]
    for i, line in enumerate(item.solution.strip().splitlines()):
        if i >= len(attempt) or attempt[i] != line.strip():
            return line.strip()
    return ""


TEACHER_PROMPT = (
    "A student solved this problem.\n\nProblem:\n{question}\n\nReference answer:\n{answer}\n\n"
    "Student's solution:\n{solution}\n\nThe student's solution is wrong. In one or two sentences, name the "
    "first step that goes wrong and give its correct result. Do not write a new solution."
)


class TeacherWriter:
    """Critiques written by a (larger) model: `generate(prompt) -> text`, e.g. `TeacherWriter.from_pretrained`."""

    def __init__(self, generate: Callable[[str], str], prompt: str = TEACHER_PROMPT):
        self.generate, self.prompt = generate, prompt

    @classmethod
    def from_pretrained(cls, name_or_path: str, max_new_tokens: int = 128) -> TeacherWriter:
        """Greedy critiques from any HF causal LM, the prompt sent as a user message (`ChatModel`)."""
        from relayrl.generation.chat import ChatModel  # here: reward workers import this module without torch
        from relayrl.generation.sampler import SamplingConfig

        chat, greedy = ChatModel(name_or_path), SamplingConfig(max_new_tokens, temperature=0.0)
        return cls(lambda prompt: chat.reply([{"role": "user", "content": prompt}], greedy).text)

    def __call__(self, item: Item, solution: str, correct: bool) -> str:
        if correct:
            return ""
        question = item.prompt if isinstance(item.prompt, str) else item.prompt[-1]["content"]
        text = self.prompt.format(question=question.strip(), solution=solution.strip(), answer=item.answer)
        return " " + self.generate(text).strip()
