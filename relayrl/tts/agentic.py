"""Agentic test-time scaling: the N candidates of an item are multi-turn episodes (the policy writes code, the
environment answers with what failed, the policy revises), and each method picks one episode, whose final turn the
task's scorer judges (HumanEval: the hidden tests).

A long trajectory is too much for a judge to compare, or for the next attempt's prompt to carry, so methods that
need a model to read one read its summary instead: a short structured account (hypotheses, progress, failure modes)
written from the transcript by the policy or the judge (`tts.summarizer`). Methods that can run the public examples
(the docstring's, `Item.meta["examples"]`) do, for free in tokens:

- single: the first episode; pass_at_n: the first episode the scorer passes (the oracle, the pass@N ceiling);
- best_of_n_examples: the episode whose final program passes the most public examples (ties: the first);
- majority_output: episodes grouped by what their final programs return on the public examples' inputs, the
  first of the largest group (a behavioural equivalence class: differently written, same outputs);
- rtv_summaries: Recursive Tournament Voting over the episodes' summaries, the pairwise judge deciding matches;
- pdr_summaries: Parallel-Distill-Refine whose round 0 is the N shared episodes; each later round runs new
  episodes whose prompt carries the summaries of the previous round's top `tts.pdr_keep` by public examples
  passed; a tournament over the last round's summaries picks the answer.

Costs follow relayrl/tts/evaluate.py: each method is charged for the episodes it uses as if it had run them, and
a summary is charged to every method that reads it, though it is written once. An episode's tokens are those of
each of its turns as an endpoint bills a request: the whole context (prompt, earlier turns, the environment's
replies) and the turn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from relayrl.config import Config
from relayrl.environments import ENVIRONMENT, POLICY, Environment
from relayrl.evaluation.metrics import majority_vote
from relayrl.generation.episodes import Episode, run_episodes
from relayrl.generation.sampler import Sample, SamplingConfig, draw, encode_prompt
from relayrl.rewards.code_execution import examples_passed, examples_program, solution_code
from relayrl.rewards.judge import ChatJudge
from relayrl.sandbox import SandboxPool
from relayrl.tasks.base import Item, Task
from relayrl.tts.evaluate import Cost, Methods, with_context
from relayrl.tts.pdr import parallel_distill_refine
from relayrl.tts.tournament import tournament
from relayrl.tts.voting import best_of_n

LABELS = {POLICY: "Attempt", ENVIRONMENT: "Feedback"}
SUMMARY = (
    "Task:\n{question}\n\nA solver's attempts at it, each followed by the feedback it got:\n\n{transcript}\n\n"
    "Summarize the work in three short lines:\nHypotheses: what the solver assumed the task asks\n"
    "Progress: what works so far\nFailure modes: what still fails, and why"
)
MATCH = (
    "Task:\n{question}\n\nSummaries of two attempts at it:\n\nAttempt A:\n{a}\n\nAttempt B:\n{b}\n\n"
    "Which attempt is closer to a correct solution? End with 'Winner: A' or 'Winner: B'."
)


@dataclass
class Trajectory:
    """An episode as the methods read it."""

    final: str  # the policy's last turn: the program the task's scorer runs
    transcript: str  # turns and replies, labelled: what a summary is written from
    tokens: int  # each turn's context and output, summed (see the module's docstring)
    passed: int = 0  # public examples the final program passes
    outputs: str | None = None  # its report on the public examples, i.e. its outputs there; None: it does not run
    summary: str | None = None  # written when a method first reads it
    summary_tokens: int = 0


def trajectory(tokenizer, episode: Episode, prompt_tokens: int) -> Trajectory:
    """`episode`, started from a prompt of `prompt_tokens` tokens, as the methods read it (not yet run on the
    examples)."""
    texts = [
        (m.role, tokenizer.decode(episode.completion_ids[m.start : m.end], skip_special_tokens=True))
        for m in episode.messages
    ]
    final = next(text for role, text in reversed(texts) if role == POLICY)
    transcript = "\n\n".join(f"{LABELS[role]}:\n{text.strip()}" for role, text in texts)
    tokens = sum(prompt_tokens + m.end for m in episode.messages if m.role == POLICY)
    return Trajectory(final, transcript, tokens)


class AgenticMethods(Methods):
    """`Methods` over episodes: the same policy, sampler, judges and tournament votes; candidates run in
    `environment`, and the pairwise judge compares summaries."""

    def __init__(self, cfg: Config, task: Task, model, tokenizer, environment: Environment, sampler=None):
        super().__init__(cfg, task, model, tokenizer, sampler)
        self.environment = environment
        p = self.pairwise
        if cfg.tts.summarizer == "judge":  # wherever the judge runs (none named: the policy)
            where = {"url": p.url, "model": p.model, "model_path": p.model_path, "backend": p.backend, "chat": p.chat}
        else:
            where = {"chat": self.chat}
        self.summarizer = ChatJudge(**where, max_tokens=cfg.tts.summary_max_tokens)
        self.pairwise = dataclasses.replace(p, template=MATCH)

    def turn(self, contexts: list[list[int]], cfg: SamplingConfig, _: int) -> list[Sample]:
        return draw(self.sampler, self.tokenizer, contexts, cfg, self.gen)

    def episodes(self, item: Item, context: list[str], n: int) -> list[Trajectory]:
        """n episodes of the item, with `context` (summaries of earlier attempts) written before its prompt."""
        ids = encode_prompt(self.tokenizer, with_context(item.prompt, context))
        done = run_episodes(self.turn, self.tokenizer, self.environment, [item] * n, [ids] * n, self.sampling)
        trajectories = [trajectory(self.tokenizer, e, len(ids)) for e in done]
        prefix, examples = item.meta.get("prefix", ""), item.meta.get("examples", [])
        programs = [examples_program(solution_code(prefix, t.final), examples) for t in trajectories]
        with SandboxPool(self.cfg.environment.sandbox) as pool:
            results = pool.map(programs)
        for t, result in zip(trajectories, results, strict=True):
            passed = examples_passed(result)
            t.passed, t.outputs = passed or 0, None if passed is None else result.stdout.strip()
        return trajectories

    def summary(self, question: str, t: Trajectory) -> str:
        if t.summary is None:
            prompt = SUMMARY.format(question=question, transcript=t.transcript)
            t.summary, t.summary_tokens = self.summarizer.ask(prompt)
        return t.summary

    def item(self, item: Item, methods: list[str], index: int = 0) -> dict[str, tuple[str | None, Cost]]:
        """Each method's pick, the final turn of an episode, and its cost."""
        question = self.start(item, index)
        candidates = self.episodes(item, [], self.cfg.tts.n)
        sampled = sum(c.tokens for c in candidates)
        picks: dict[str, tuple[str | None, Cost]] = {}
        for m in methods:
            if m == "single":
                picks[m] = candidates[0].final, Cost(candidates[0].tokens)
            elif m == "pass_at_n":
                right = (c for c in candidates if self.task.scorer(c.final, item.answer) >= 1.0)
                picks[m] = next(right, candidates[0]).final, Cost(sampled)
            elif m == "best_of_n_examples":
                picks[m] = candidates[best_of_n([c.passed for c in candidates])].final, Cost(sampled)
            elif m == "majority_output":
                winner = majority_vote([c.outputs for c in candidates])
                picks[m] = (None if winner is None else candidates[winner].final), Cost(sampled)
            elif m == "rtv_summaries":
                summaries = [self.summary(question, c) for c in candidates]
                cost = Cost(sampled, summary_tokens=sum(c.summary_tokens for c in candidates))
                result = tournament(summaries, self.vote(item, question, cost), self.cfg.tts.votes)
                cost.judge_tokens = result.judge_tokens
                picks[m] = candidates[result.winner].final, cost
            elif m == "pdr_summaries":
                picks[m] = self.pdr(item, question, candidates)
        return picks

    def pdr(self, item: Item, question: str, first: list[Trajectory]) -> tuple[str, Cost]:
        """`parallel_distill_refine` over episodes. Its attempts are indices into `seen`, the episodes run so far: the
        ranking reads their public examples passed, the next round's prompt and the judge their summaries."""
        t, cost = self.cfg.tts, Cost()
        seen: list[Trajectory] = []
        read: set[int] = set()  # whose summaries were read: each is charged once

        def summary(attempt: str) -> str:
            read.add(int(attempt))
            return self.summary(question, seen[int(attempt)])

        def generate(_: str, context: list[str], n: int) -> list[tuple[str, int]]:
            reuse = not context and n <= len(first)  # round 0: the shared episodes
            new = first[:n] if reuse else self.episodes(item, [summary(a) for a in context], n)
            seen.extend(new)
            return [(str(len(seen) - n + k), e.tokens) for k, e in enumerate(new)]

        vote = self.vote(item, question, cost)
        result = parallel_distill_refine(
            question,
            generate,
            lambda _, attempts: ([float(seen[int(a)].passed) for a in attempts], 0),
            lambda a, b, index: vote(summary(a), summary(b), index),
            width=t.pdr_width or t.n,
            keep=t.pdr_keep,
            rounds=t.pdr_rounds,
            votes=t.votes,
        )
        cost.generation_tokens, cost.judge_tokens = result.generated_tokens, result.judge_tokens
        cost.summary_tokens = sum(seen[i].summary_tokens for i in read)
        return seen[int(result.answer)].final, cost
