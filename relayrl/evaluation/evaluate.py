"""Score a model on held-out items: greedy pass@1, and from n samples per item pass@k and maj@k."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from relayrl.environments import Environment
from relayrl.evaluation.metrics import majority_vote, mean_interval, pass_at_k, spoc_metrics, wilson_interval
from relayrl.generation.episodes import run_episodes
from relayrl.generation.sampler import Sample, SamplingConfig, draw, encode_prompt, sample_texts
from relayrl.tasks.base import Item, Scorer


@dataclass
class EvalResult:
    accuracy: float  # greedy pass@1
    interval: tuple[float, float]
    outputs: list[dict]  # one per item: prompt, answer, greedy text, samples and their scores
    scores: dict[str, float] = field(default_factory=dict)  # "greedy_pass@1", "pass@k" (sampled), "maj@k"
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # 95%, same keys
    # of the greedy completions: SPOC's self-correction metrics; an environment's tool calls per episode
    message_metrics: dict[str, float | None] = field(default_factory=dict)


def evaluate(
    model,  # a Hugging Face model, or a generation engine (sample_texts)
    tokenizer,
    items: list[Item],
    scorer: Scorer,
    sampling: SamplingConfig,
    batch_size: int = 128,
    n_samples: int = 0,
    ks: tuple[int, ...] = (),
    seed: int = 0,
    extract: Callable[[str], str | None] | None = None,
    message_scorer: Callable[[str, str], list[tuple[str, float]]] | None = None,
    environment: Environment | None = None,
) -> EvalResult:
    """Greedy accuracy; with n_samples > 0 also pass@k, and maj@k when `extract` reads answers to vote on.

    pass@1 from n samples is the sampled accuracy averaged over the n samples; maj@k votes over
    each item's first k samples. `message_scorer` (SPOC: (role, reward) per message) adds the
    self-correction metrics of the greedy completions. With an `environment`, each completion is an episode's
    transcript (its replies included), and `message_metrics["tool_calls"]` the greedy episodes' mean count of replies.
    """
    if any(k > n_samples for k in ks):
        raise ValueError(f"--k: every k must be at most --samples={n_samples}; got {list(ks)}")
    if isinstance(model, torch.nn.Module):
        model.eval()
    greedy = dataclasses.replace(sampling, temperature=0.0, top_p=1.0)
    outputs: list[dict] = []
    gen = torch.Generator().manual_seed(seed)

    tool_calls: list[int] = []

    def run(chunk: list[Item], prompts: list[list[int]], cfg: SamplingConfig) -> list[str]:
        if environment is None:
            return [c.text for c in sample_texts(model, tokenizer, prompts, cfg, gen)]

        def turn(contexts: list[list[int]], turn_cfg: SamplingConfig, _: int) -> list[Sample]:
            return draw(model, tokenizer, contexts, turn_cfg, gen)

        episodes = run_episodes(turn, tokenizer, environment, chunk, prompts, cfg)
        if cfg is greedy:
            tool_calls.extend(e.tool_calls for e in episodes)
        return [tokenizer.decode(e.completion_ids, skip_special_tokens=True) for e in episodes]

    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        prompts = [encode_prompt(tokenizer, it.prompt) for it in chunk]
        greedy_texts = run(chunk, prompts, greedy)
        repeat = [j for j in range(len(chunk)) for _ in range(n_samples)]
        many = run([chunk[j] for j in repeat], [prompts[j] for j in repeat], sampling) if n_samples else []
        for i, it in enumerate(chunk):
            samples = many[i * n_samples : (i + 1) * n_samples]
            outputs.append(
                {
                    "prompt": it.prompt,
                    "answer": it.answer,
                    "greedy": greedy_texts[i],
                    "greedy_correct": scorer(greedy_texts[i], it.answer),
                    "samples": samples,
                    "samples_correct": [scorer(s, it.answer) for s in samples],
                    "samples_answer": [extract(s) for s in samples] if extract else [],
                }
                | ({"greedy_messages": message_scorer(greedy_texts[i], it.answer)} if message_scorer else {})
            )
    per_item = {"greedy_pass@1": [float(o["greedy_correct"] >= 1.0) for o in outputs]}
    for k in ks:
        per_item[f"pass@{k}"] = [pass_at_k(n_samples, sum(c >= 1.0 for c in o["samples_correct"]), k) for o in outputs]
        if extract:
            per_item[f"maj@{k}"] = [_majority_correct(o, k) for o in outputs]
    scores = {name: sum(v) / len(v) for name, v in per_item.items()}
    intervals = {name: mean_interval(v) for name, v in per_item.items()}
    correct = sum(per_item["greedy_pass@1"])
    intervals["greedy_pass@1"] = wilson_interval(correct, len(outputs))
    messages = spoc_metrics([o["greedy_messages"] for o in outputs]) if message_scorer else {}
    if tool_calls:
        messages["tool_calls"] = sum(tool_calls) / len(tool_calls)
    return EvalResult(correct / len(outputs), intervals["greedy_pass@1"], outputs, scores, intervals, messages)


def _majority_correct(output: dict, k: int) -> float:
    winner = majority_vote(output["samples_answer"][:k])
    return float(winner is not None and output["samples_correct"][winner] >= 1.0)
