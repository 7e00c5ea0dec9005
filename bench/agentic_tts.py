"""Agentic test-time scaling on HumanEval (docs/recipes/agentic_tts.md): the policy writes a function, the code-feedback
environment runs the docstring's examples and answers with the first failure, the policy revises. Every agentic
method of `relayrl tts` picks one episode (PDR runs more), scored on the hidden tests, with the tokens it spent.

    .venv/bin/python bench/agentic_tts.py [--model DIR] [--items 12] [--n 4] [--turns 2] [--max-new-tokens 192]
        [--summary-tokens 96] [--judge-tokens 32] [key=value overrides]

First prints a worst-case estimate of the run's time for SmolLM2-135M-Instruct on this machine (`estimate`), then
writes bench/results/agentic_tts.json: top level, each method's `<method>_accuracy` and `<method>_tokens_per_item`,
the seconds taken and the estimate; every method's full summary in `rows`; the command.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import save

from relayrl import build
from relayrl.config import Config, load_config
from relayrl.generation.sampler import encode_prompt
from relayrl.models import TinySize, load_model_and_tokenizer
from relayrl.tts.evaluate import evaluate_tts, table

SMOLLM2 = "~/.cache/relayrl/models/smollm2-135m-instruct"


def estimate(cfg: Config, prompt_tokens: float) -> dict[str, float]:
    """Worst-case seconds, from token counts and measured speeds: every turn writes its whole budget, every episode
    runs every turn, every episode is summarized and every summary and vote fills its budget. A batch of episodes
    decodes at SmolLM2-135M's measured speed for its size (bench/results/sampler_speed.json), summaries and votes
    one at a time; reading a token (a turn's context, a summary's transcript) is charged as decoding one in the
    largest batch measured (both are matmul-bound on a CPU: at most about twice as fast at the matmul peak), and a
    reply as `environment.reply_chars` / 4 tokens. Sandbox runs take the measured latency of one
    (bench/results/sandbox.json)."""
    results = Path(__file__).parent / "results"
    rows = json.loads((results / "sampler_speed.json").read_text())["rows"]
    speed = {r["batch"]: r["relayrl"]["tokens_per_second"] for r in rows}
    latency = json.loads((results / "sandbox.json").read_text())["pools"]["1"]["median_latency_ms"] / 1000

    def rate(batch: int) -> float:
        return float(np.interp(batch, list(speed), list(speed.values())))

    t, e, turns, budget = cfg.tts, cfg.environment, cfg.environment.max_turns, cfg.rollout.max_new_tokens
    turn = budget + e.reply_chars / 4
    width = t.pdr_width or t.n
    later = (width, prompt_tokens + t.pdr_keep * t.summary_max_tokens)  # a PDR round's prompt carries summaries
    rounds = [(t.n, prompt_tokens), *[later] * (t.pdr_rounds - 1)]  # (episodes, prompt tokens) per batch
    episodes = sum(b for b, _ in rounds)
    votes = (t.n - 1 + width - 1) * t.votes * (2 if cfg.reward.judge_both_orders else 1)
    written = sum(turns * budget * b / rate(b) for b, _ in rounds)
    written += (episodes * t.summary_max_tokens + votes * cfg.reward.judge_max_tokens) / rate(1)
    read = sum(b * (turns * p + turns * (turns - 1) / 2 * turn) for b, p in rounds)
    read += episodes * (prompt_tokens + turns * turn) + votes * (prompt_tokens + 2 * t.summary_max_tokens)
    runs = episodes * (turns + 1) + t.n + len(t.agentic_methods)  # feedback, public examples, hidden tests
    items = t.items or len(build.task(cfg).heldout())
    per_item = {"decode": written, "read": read / rate(max(speed)), "sandbox": runs * latency}
    return {f"{k}_seconds": v * items for k, v in per_item.items()} | {"seconds": sum(per_item.values()) * items}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=SMOLLM2, help="the policy (a builtin, e.g. tiny-llama, checks the script)")
    p.add_argument("--items", type=int, default=12, help="held-out problems (the first of the 64)")
    p.add_argument("--n", type=int, default=4, help="episodes per problem")
    p.add_argument("--turns", type=int, default=2, help="policy turns per episode")
    p.add_argument("--max-new-tokens", type=int, default=192, help="per turn")
    p.add_argument("--summary-tokens", type=int, default=96)
    p.add_argument("--judge-tokens", type=int, default=32)
    p.add_argument("--out", default="bench/results")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. tts.votes=3")
    args = p.parse_intermixed_args()
    overrides = [
        f"model.name_or_path={args.model}",
        "task.name=humaneval",
        "task.humaneval.format=chat",
        "environment.name=code_feedback",
        "environment.tool_format=chat",
        f"environment.max_turns={args.turns}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"tts.n={args.n}",
        f"tts.items={args.items}",
        f"tts.summary_max_tokens={args.summary_tokens}",
        f"reward.judge_max_tokens={args.judge_tokens}",
        *args.overrides,
    ]
    cfg = load_config(None, overrides, training=False)
    m = cfg.model
    model, tokenizer = load_model_and_tokenizer(m.name_or_path, TinySize(m.hidden, m.layers, m.heads), cfg.seed)
    items = build.task(cfg).heldout()[: cfg.tts.items or None]
    prompt_tokens = sum(len(encode_prompt(tokenizer, it.prompt)) for it in items) / len(items)
    guess = estimate(cfg, prompt_tokens)
    parts = ", ".join(f"{k.removesuffix('_seconds')} {v:.0f} s" for k, v in guess.items() if k != "seconds")
    minutes = guess["seconds"] / 60
    print(f"worst case at SmolLM2-135M's speed: {minutes:.0f} min ({parts}; prompts of {prompt_tokens:.0f} tokens)")
    start = time.monotonic()
    report = evaluate_tts(cfg, m.name_or_path, model, tokenizer)
    seconds = time.monotonic() - start
    print(table(report))
    methods = report["methods"]
    result = {
        **{f"{name}_accuracy": r["accuracy"] for name, r in methods.items()},
        **{f"{name}_tokens_per_item": r["tokens_per_item"] for name, r in methods.items()},
        "seconds": seconds,
        "estimate": guess,
        "items": report["items"],
        "task": report["task"],
        "model": report["model"],
        "judge": report["judge"],
        "summarizer": report["summarizer"],
        "tts": report["tts"],
        "environment": report["environment"],
        "rows": [{"method": name} | r for name, r in methods.items()],
    }
    save(result, args.out, "agentic_tts")


if __name__ == "__main__":
    main()
