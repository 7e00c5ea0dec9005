"""The agentic miniatures (docs/recipes/agentic.md), each a training run from its run file in examples/:

- calculator: the tiny model with a calculator tool on arithmetic it cannot do in its head, against the same model,
  warm start and RL without the tool (`no_tool`);
- expression: a code task scored by running the policy's program in the sandbox;
- humaneval: SmolLM2-135M-Instruct on HumanEval, with pass@1 and pass@N (N samples of each of the first
  `--pass-items` held-out problems) before and after a short RL run.

    .venv/bin/python bench/agentic.py [--arms calculator,no_tool,expression,humaneval] [key=value overrides]

Writes bench/results/agentic.json (top-level `tool_rl_gain_points`: the calculator arm's held-out accuracy after RL
minus before, in points; arms run by an earlier invocation are kept) and docs/recipes/agentic.png (held-out
accuracy over RL steps, every arm).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from common import save, save_plot

from relayrl import build
from relayrl.config import Config, load_config
from relayrl.controller import train
from relayrl.evaluation.evaluate import evaluate
from relayrl.models import load_model_and_tokenizer
from relayrl.tracking import read_jsonl
from relayrl.training import checkpoint

ARMS = {
    "calculator": "examples/agentic_calculator.yaml",
    "no_tool": "examples/agentic_no_tool.yaml",
    "expression": "examples/agentic_expression.yaml",
    "humaneval": "examples/smollm2_humaneval.yaml",
}


def pass_at(model_path: str, cfg: Config, items: int, n: int) -> dict:
    """Greedy pass@1, sampled pass@1 and pass@n on the first `items` held-out problems."""
    task = build.task(cfg)
    model, tokenizer = load_model_and_tokenizer(model_path)
    sampling = build.sampling(cfg, task.stop_strings)
    result = evaluate(model, tokenizer, task.heldout()[:items], task.scorer, sampling, n_samples=n, ks=(1, n), seed=0)
    return {"greedy_pass@1": result.accuracy, **result.scores, "items": items, "samples": n}


def arm(name: str, overrides: list[str], root: Path, pass_items: int, pass_n: int) -> dict:
    cfg = load_config(ARMS[name], [*overrides, f"run_dir={root}", f"name={name}"])
    before = pass_at(cfg.model.name_or_path, cfg, pass_items, pass_n) if name == "humaneval" else None
    run_dir = train(cfg, show_progress=False)
    s = json.loads((run_dir / "summary.json").read_text())
    records = read_jsonl(run_dir / "metrics.jsonl")
    curve = [(0, s["heldout_accuracy_start"])] + [
        (r["step"], r["heldout_accuracy"]) for r in records if "heldout_accuracy" in r
    ]
    return {
        "task": s["task"],
        "accuracy_start": s["heldout_accuracy_start"],
        "accuracy_end": s["heldout_accuracy_end"],
        "interval_end": s["heldout_interval_end"],
        "rl_gain_points": 100 * (s["heldout_accuracy_end"] - s["heldout_accuracy_start"]),
        "tool_calls_start": (s["heldout_messages_start"] or {}).get("tool_calls"),
        "tool_calls_end": (s["heldout_messages_end"] or {}).get("tool_calls"),
        "train_tool_calls_first_last": [records[0].get("tool_calls"), records[-1].get("tool_calls")],
        "steps": s["steps"],
        "heldout_size": s["heldout_size"],
        "sft_seconds": s["sft_seconds"],
        "rl_seconds": s["rl_seconds"],
        "reward_failures": s["reward_failures"],
        "curve": curve,
        "run_dir": str(run_dir),
    } | (
        {
            "pass_before": before,
            "pass_after": pass_at(str(checkpoint.latest(run_dir / "checkpoints")), cfg, pass_items, pass_n),
        }
        if before
        else {}
    )


def plot(arms: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in arms.items():
        ax.plot(*zip(*r["curve"], strict=True), marker="o", markersize=3, label=f"{name} ({r['task']})")
    save_plot(fig, ax, path, "RL step", "held-out accuracy (greedy)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--root", default="runs/agentic")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--plot", default="docs/recipes/agentic.png")
    parser.add_argument("--pass-items", type=int, default=32, help="humaneval: held-out problems for pass@n")
    parser.add_argument("--pass-n", type=int, default=8)
    args, overrides = parser.parse_known_args()
    saved = Path(args.out) / "agentic.json"
    arms = json.loads(saved.read_text())["arms"] if saved.exists() else {}
    for name in args.arms.split(","):
        arms[name] = arm(name, overrides, Path(args.root), args.pass_items, args.pass_n)
        arms[name]["command"] = shlex.join([".venv/bin/python", *sys.argv])  # arms may come from several invocations
    plot(arms, Path(args.plot))
    result: dict = {}
    if "calculator" in arms:
        result["tool_rl_gain_points"] = arms["calculator"]["rl_gain_points"]
    if {"calculator", "no_tool"} <= arms.keys():
        result["tool_minus_no_tool_points_after_rl"] = 100 * (
            arms["calculator"]["accuracy_end"] - arms["no_tool"]["accuracy_end"]
        )
    save(result | {"arms": arms}, args.out, "agentic")


if __name__ == "__main__":
    main()
