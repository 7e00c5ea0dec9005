"""Score a model on held-out items: greedy pass@1 and sampled pass@k."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from relayrl.evaluation.metrics import pass_at_k, wilson_interval
from relayrl.generation.sampler import SamplingConfig, encode_prompt, sample
from relayrl.tasks.base import Item, Scorer


@dataclass
class EvalResult:
    accuracy: float  # greedy pass@1
    interval: tuple[float, float]
    pass_at: dict[int, float]  # sampled, unbiased
    outputs: list[dict]


def evaluate(
    model,
    tokenizer,
    items: list[Item],
    scorer: Scorer,
    sampling: SamplingConfig,
    batch_size: int = 128,
    n_samples: int = 0,
    ks: tuple[int, ...] = (),
    seed: int = 0,
) -> EvalResult:
    """Greedy accuracy; with n_samples > 0 also pass@k at `sampling.temperature`."""
    model.eval()
    greedy = SamplingConfig(sampling.max_new_tokens, 0.0, 1.0, sampling.stop_strings)
    outputs: list[dict] = []
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        prompts = [encode_prompt(tokenizer, it.prompt) for it in chunk]
        texts = [
            [
                _text(s, tokenizer)
                for s in sample(
                    model, prompts, greedy, tokenizer.eos_token_id, tokenizer.pad_token_id, gen, tokenizer.decode
                )
            ]
        ]
        if n_samples:
            many = sample(
                model,
                [p for p in prompts for _ in range(n_samples)],
                sampling,
                tokenizer.eos_token_id,
                tokenizer.pad_token_id,
                gen,
                tokenizer.decode,
            )
            texts.append([_text(s, tokenizer) for s in many])
        for i, it in enumerate(chunk):
            g = texts[0][i]
            samples = texts[1][i * n_samples : (i + 1) * n_samples] if n_samples else []
            outputs.append(
                {
                    "prompt": it.prompt,
                    "answer": it.answer,
                    "greedy": g,
                    "greedy_correct": scorer(g, it.answer),
                    "samples_correct": [scorer(s, it.answer) for s in samples],
                    "samples": samples,
                }
            )
    correct = sum(o["greedy_correct"] >= 1.0 for o in outputs)
    pass_at = {
        k: sum(pass_at_k(n_samples, sum(c >= 1.0 for c in o["samples_correct"]), k) for o in outputs) / len(outputs)
        for k in ks
        if n_samples
    }
    return EvalResult(correct / len(outputs), wilson_interval(correct, len(outputs)), pass_at, outputs)


def _text(s, tokenizer) -> str:
    return tokenizer.decode(s.completion_ids, skip_special_tokens=True)
