"""The agentic miniatures (docs/recipes/agentic.md), each a training run from its run file in examples/:

- calculator: the tiny model with a calculator tool on arithmetic it cannot do in its head, against the same model,
  warm start and RL without the tool (`no_tool`);
- expression: a code task scored by running the policy's program in the sandbox.

    .venv/bin/python bench/agentic.py [--arms calculator,no_tool,expression] [key=value overrides for every arm]

Writes bench/results/agentic.json (top-level `tool_rl_gain_points`: the calculator arm's held-out accuracy after RL
minus before, in points) and docs/recipes/agentic.png (held-out accuracy over RL steps, every arm).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import save, save_plot

from relayrl.config import load_config
from relayrl.controller import train
from relayrl.tracking import read_jsonl

ARMS = {
    "calculator": "examples/agentic_calculator.yaml",
    "no_tool": "examples/agentic_no_tool.yaml",
    "expression": "examples/agentic_expression.yaml",
}


def arm(name: str, overrides: list[str], root: Path) -> dict:
    run_dir = train(load_config(ARMS[name], [*overrides, f"run_dir={root}", f"name={name}"]), show_progress=False)
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
    }


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
    args, overrides = parser.parse_known_args()
    arms = {name: arm(name, overrides, Path(args.root)) for name in args.arms.split(",")}
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
