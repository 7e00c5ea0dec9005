"""`relayrl tts`: test-time scaling methods side by side on a task's held-out set, with the tokens each spent.

Each item's N candidates are sampled once and shared: a method is charged for the candidates it uses as if it
had sampled them (single: the first; the others: all N) plus what it spends choosing (judge calls, reward-model
reads); PDR samples its own rounds. A token is any prompt or completion token a model processed, as an
endpoint's `usage.total_tokens` counts them, so the methods compare at equal compute. Accuracy is the task's
verifier on the candidate each method picks. With an environment, a candidate is a multi-turn episode and the
methods are relayrl/tts/agentic.py's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.progress import track

from relayrl import build
from relayrl.algorithms.reward_losses import preference_probability
from relayrl.config import Config
from relayrl.evaluation.metrics import majority_vote, wilson_interval
from relayrl.generation.chat import ChatModel
from relayrl.generation.sampler import encode_prompt, prompt_text, sample_texts
from relayrl.rewards.judge import POINTWISE_NO_REFERENCE, PairwiseJudge, make_judge
from relayrl.rewards.model_scorer import RewardModelScorer
from relayrl.tasks.base import Item, Task
from relayrl.tts.pdr import parallel_distill_refine
from relayrl.tts.tournament import Judge, tournament
from relayrl.tts.voting import best_of_n, weighted_majority

CONTEXT = "Earlier attempts, the best first:\n{attempts}\n\n"


@dataclass
class Cost:
    generation_tokens: int = 0  # the policy's: candidates and PDR rounds
    judge_tokens: int = 0  # the judge's or reward model's, choosing among them
    judge_calls: int = 0
    judge_failures: int = 0  # judge replies without a score or verdict
    summary_tokens: int = 0  # agentic methods: the trajectory summaries' (written by the policy or the judge)

    def add(self, other: Cost) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def tokens(self) -> int:
        return self.generation_tokens + self.summary_tokens + self.judge_tokens


@dataclass
class MethodResult:
    correct: list[float] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)

    def summary(self) -> dict:
        n, tokens = len(self.correct), self.cost.tokens
        return {
            "accuracy": sum(self.correct) / n,
            "ci95": wilson_interval(sum(self.correct), n),
            "tokens": tokens,
            "tokens_per_item": tokens / n,
        } | dataclasses.asdict(self.cost)


def with_context(prompt: str | tuple[dict, ...], attempts: list[str]) -> str | tuple[dict, ...]:
    """The prompt with earlier attempts written before it (chat prompts: into the last message)."""
    note = CONTEXT.format(attempts="\n\n".join(a.strip() for a in attempts)) if attempts else ""
    if isinstance(prompt, str):
        return note + prompt
    *head, last = prompt
    return (*head, {**last, "content": note + last["content"]})


class Methods:
    """The policy, the judges and the scorer, and each method's pick for one item."""

    def __init__(self, cfg: Config, task: Task, model, tokenizer, sampler=None):
        self.cfg, self.task, self.tokenizer = cfg, task, tokenizer
        self.sampler = sampler or model  # what samples the policy's candidates and its replies as a judge
        self.sampling = build.sampling(cfg, task.stop_strings)
        self.gen = torch.Generator()  # seeded per item
        self.chat = ChatModel("policy", model=model, tokenizer=tokenizer, sampler=self.sampler)
        r = cfg.reward
        where = {} if r.judge_url or r.judge_model_path else {"chat": self.chat}  # no judge named: the policy judges
        self.pairwise: PairwiseJudge = make_judge(r, "pairwise", temperature=cfg.tts.judge_temperature, **where)
        self.pointwise = make_judge(
            r, "pointwise", temperature=cfg.tts.judge_temperature, template=POINTWISE_NO_REFERENCE, **where
        )
        uses_rm = "reward_model" in (cfg.tts.scorer, cfg.tts.match)
        self.reward_model = RewardModelScorer(r.model) if uses_rm else None

    def generate(self, prompt: str | tuple[dict, ...], n: int) -> list[tuple[str, int]]:
        """n sampled completions of the prompt, each with its tokens (prompt + completion)."""
        ids = encode_prompt(self.tokenizer, prompt)
        done = sample_texts(self.sampler, self.tokenizer, [ids] * n, self.sampling, self.gen)
        return [(c.text, c.total_tokens) for c in done]

    def score(self, item: Item, question: str, texts: list[str], cost: Cost) -> list[float | None]:
        """Each candidate's score in [0, 1] by `tts.scorer` (None: the judge gave none), charging `cost`."""
        values: list[float | None] = []
        for text in texts:
            if self.cfg.tts.scorer == "verifier":
                values.append(self.task.scorer(text, item.answer))
                continue
            if self.cfg.tts.scorer == "reward_model":  # a Bradley-Terry reward is a logit
                value = preference_probability(self.reward_model(text, item.answer, question))
                tokens = self.reward_model.tokens(text, question)
            else:
                value, tokens = self.pointwise.rate(question, text)
                cost.judge_failures += value is None
            values.append(value)
            cost.judge_tokens += tokens
            cost.judge_calls += 1
        return values

    def vote(self, item: Item, question: str, cost: Cost) -> Judge:
        """The tournament's judge, counting its calls and failures in `cost`: the pairwise judge, or the reward
        model's Bradley-Terry preference for b, sigmoid(r_b - r_a)."""

        def preference(a: str, b: str, index: int) -> tuple[float | None, int]:
            ra, rb = (self.reward_model(text, item.answer, question) for text in (a, b))
            cost.judge_calls += 1
            return preference_probability(rb - ra), sum(self.reward_model.tokens(text, question) for text in (a, b))

        def judge(a: str, b: str, index: int) -> tuple[float | None, int]:
            verdict = self.pairwise.compare(question, a, b, seed=index)
            cost.judge_calls += 2 if self.pairwise.both_orders else 1
            cost.judge_failures += verdict.unparsed
            return verdict.preference, verdict.tokens

        return preference if self.cfg.tts.match == "reward_model" else judge

    def start(self, item: Item, index: int) -> str:
        """Seed the item's sampling from the seed and its `index` alone, so runs with other methods (PDR samples
        more) see the same candidates; the question judges are shown."""
        self.gen.manual_seed(self.cfg.seed * 1_000_003 + index)
        return prompt_text(self.tokenizer, item.prompt)

    def item(self, item: Item, methods: list[str], index: int = 0) -> dict[str, tuple[str | None, Cost]]:
        """Each method's pick among this item's candidates, and its cost."""
        t = self.cfg.tts
        question = self.start(item, index)
        candidates = self.generate(item.prompt, t.n)
        texts, sampled = [c for c, _ in candidates], sum(tokens for _, tokens in candidates)
        scored = Cost(sampled)
        scores = self.score(item, question, texts, scored) if {"best_of_n", "weighted_majority"} & set(methods) else []
        picks: dict[str, tuple[str | None, Cost]] = {}
        for m in methods:
            if m == "single":
                picks[m] = texts[0], Cost(candidates[0][1])
            elif m == "majority":
                winner = majority_vote([self.task.extract(c) for c in texts])
                picks[m] = (None if winner is None else texts[winner]), Cost(sampled)
            elif m == "weighted_majority":
                weights = [v or 0.0 for v in scores]
                winner = weighted_majority([self.task.extract(c) for c in texts], weights)
                picks[m] = (None if winner is None else texts[winner]), dataclasses.replace(scored)
            elif m == "best_of_n":
                picks[m] = texts[best_of_n([-1.0 if v is None else v for v in scores])], dataclasses.replace(scored)
            elif m == "tournament":
                cost = Cost(sampled)
                result = tournament(texts, self.vote(item, question, cost), t.votes)
                cost.judge_tokens = result.judge_tokens
                picks[m] = texts[result.winner], cost
            elif m == "pdr":
                picks[m] = self.pdr(item, question)
        return picks

    def pdr(self, item: Item, question: str) -> tuple[str, Cost]:
        t, cost = self.cfg.tts, Cost()

        def rank(_: str, attempts: list[str]) -> tuple[list[float], int]:
            before = cost.judge_tokens
            values = self.score(item, question, attempts, cost)
            return [-1.0 if v is None else v for v in values], cost.judge_tokens - before

        result = parallel_distill_refine(
            question,
            lambda _, context, n: self.generate(with_context(item.prompt, context), n),
            rank,
            self.vote(item, question, cost),
            width=t.pdr_width or t.n,
            keep=t.pdr_keep,
            rounds=t.pdr_rounds,
            votes=t.votes,
        )
        cost.generation_tokens, cost.judge_tokens = result.generated_tokens, result.judge_tokens
        return result.answer, cost


def evaluate_tts(cfg: Config, model_name: str, model, tokenizer, show_progress: bool = True, sampler=None) -> dict:
    """Every method of `tts.methods` (with an environment: `tts.agentic_methods`) on the held-out set: accuracy,
    tokens, judge calls and failures."""
    task = build.task(cfg)
    items = task.heldout()[: cfg.tts.items or None]
    environment = build.environment(cfg)
    if environment is None:
        methods, chosen = Methods(cfg, task, model, tokenizer, sampler), cfg.tts.methods
    else:
        from relayrl.tts.agentic import AgenticMethods  # it subclasses Methods: a top-level import would be circular

        methods, chosen = AgenticMethods(cfg, task, model, tokenizer, environment, sampler), cfg.tts.agentic_methods
    results = {m: MethodResult() for m in chosen}
    for index, item in enumerate(track(items, description="test-time scaling", disable=not show_progress)):
        for m, (pick, cost) in methods.item(item, chosen, index).items():
            results[m].correct.append(float(pick is not None and task.scorer(pick, item.answer) >= 1.0))
            results[m].cost.add(cost)
    named = cfg.reward.judge_url or cfg.reward.judge_model_path or f"{model_name} (the policy)"
    judge = f"{cfg.reward.model} (reward model, Bradley-Terry)" if cfg.tts.match == "reward_model" else named
    agentic = {
        "environment": dataclasses.asdict(cfg.environment),
        "summarizer": named if cfg.tts.summarizer == "judge" else f"{model_name} (the policy)",
    }
    return {
        "task": task.name,
        "model": model_name,
        "judge": judge,
        "items": len(items),
        "tts": dataclasses.asdict(cfg.tts),
        **(agentic if environment else {}),
        "methods": {m: r.summary() for m, r in results.items()},
    }


def table(report: dict) -> str:
    if "environment" in report:
        chooser = f"environment={report['environment']['name']}, summarizer={report['summarizer']}"
    else:
        chooser = f"scorer={report['tts']['scorer']}"
    lines = [
        f"{report['task']}, {report['items']} items, N={report['tts']['n']}, V={report['tts']['votes']}, "
        f"{chooser}, judge={report['judge']}",
        "| method | accuracy (95% CI) | tokens/item | generation tokens | summary tokens | judge tokens | judge calls "
        "| unparsed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, r in report["methods"].items():
        lines.append(
            f"| {m} | {r['accuracy']:.1%} ({r['ci95'][0]:.1%}-{r['ci95'][1]:.1%}) | {r['tokens_per_item']:.0f} | "
            f"{r['generation_tokens']} | {r['summary_tokens']} | {r['judge_tokens']} | {r['judge_calls']} | "
            f"{r['judge_failures']} |"
        )
    return "\n".join(lines)


def write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
