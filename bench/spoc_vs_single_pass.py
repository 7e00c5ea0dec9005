"""A miniature reproduction of SPOC's claim: with the same number of sampled tokens, RL on multi-message
self-correcting completions (recipe=spoc) ends more accurate than single-pass RL (recipe=rl).

Setting: the embedded arithmetic task made harder (operands up to 49 instead of 19), so the warm-started
tiny model is often wrong (about half of its greedy answers, more of its sampled ones). Per seed, the SPOC
arm runs the SFT warm start, PairSFT and `--steps` RL steps; its sampled tokens are the PairSFT samples'
plus its rollouts'. The single-pass arm starts RL from the same warm-started model (the SPOC run's
`checkpoints/pair_sft`) and gets as many RL steps as that token budget buys at the warm model's
single-solution length (measured on the PairSFT samples, which that model drew). Both arms' actual sampled
tokens are reported. Both use AIPO and the same KL to the policy RL starts from; advantages are GRPO
(single pass) and message-wise RLOO (SPOC).

Reported per arm (greedy, held out): final accuracy, first-attempt accuracy, verification TPR/TNR, average
turns, wrong-to-right and right-to-wrong rates, plus the accuracy RL started from.

    .venv/bin/python bench/spoc_vs_single_pass.py --seeds 0 1 2 [--steps 100 ...] [key=value overrides]

Writes `<out>/spoc.json` (top-level `spoc_final_accuracy` and `single_pass_final_accuracy`, the means over
seeds, beside the per-seed figures and the command) and `<out>/spoc.md` (a table), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from relayrl.config import load_config
from relayrl.controller import train
from relayrl.tracking import read_jsonl

METRICS = [
    "final_accuracy",
    "first_accuracy",
    "verification_tpr",
    "verification_tnr",
    "turns",
    "wrong_to_right",
    "right_to_wrong",
]


def token_curve(run_dir: Path, start: float = 0.0) -> list[tuple[float, dict]]:
    """(completion tokens sampled so far, metrics record) per RL step (no rollout is dropped at staleness 1)."""
    total, trained, curve = start, 0, []
    for r in read_jsonl(run_dir / "metrics.jsonl"):
        total += r["completion_length"] * (r["rollouts_trained"] - trained)
        trained = r["rollouts_trained"]
        curve.append((total, r))
    return curve


def sampled_tokens(run_dir: Path) -> int:
    """Completion tokens of every rollout RL sampled and trained on."""
    curve = token_curve(run_dir)
    return round(curve[-1][0]) if curve else 0


def plot(seeds: list[dict], path: Path) -> None:
    """Held-out final accuracy against sampled tokens, both arms, every seed (SPOC's PairSFT samples included)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for s in seeds:
        for arm, color in (("single_pass", "tab:blue"), ("spoc", "tab:orange")):
            r = s[arm]
            start = r["pair_sft"]["sampled_tokens"] if arm == "spoc" else 0
            points = [(start, r["start"]["final_accuracy"])] + [
                (t, m["heldout_accuracy"]) for t, m in token_curve(Path(r["run_dir"]), start) if "heldout_accuracy" in m
            ]
            label = f"{arm.replace('_', '-')} RL" if s is seeds[0] else None
            ax.plot(*zip(*points, strict=True), color=color, marker="o", markersize=3, alpha=0.8, label=label)
    ax.set_xlabel("completion tokens sampled (SPOC: PairSFT samples + RL rollouts)")
    ax.set_ylabel("held-out accuracy (greedy; SPOC: final answer)")
    ax.set_title(f"SPOC vs single-pass RL at equal sampled tokens, {len(seeds)} seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def run_arm(overrides: list[str]) -> tuple[Path, dict]:
    run_dir = train(load_config(None, overrides), show_progress=False)
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def spoc_arm(common: list[str], steps: int) -> dict:
    run_dir, s = run_arm([*common, "recipe=spoc", f"steps={steps}"])
    pair = s["pair_sft"]
    return {
        **s["heldout_messages_end"],
        "start": s["heldout_messages_start"],  # after PairSFT, before RL
        "steps": steps,
        "pair_sft": pair,
        "sampled_tokens": pair["sampled_tokens"] + sampled_tokens(run_dir),
        "wall_seconds": s["wall_seconds"],
        "run_dir": str(run_dir),
    }


def single_pass_arm(common: list[str], steps: int, warm: Path) -> dict:
    run_dir, s = run_arm([*common, "recipe=rl", f"steps={steps}", f"model.name_or_path={warm}", "sft.steps=0"])
    return {
        "final_accuracy": s["heldout_accuracy_end"],
        "first_accuracy": s["heldout_accuracy_end"],  # one attempt: its first is its final
        "verification_tpr": None,
        "verification_tnr": None,
        "turns": 1.0,
        "wrong_to_right": None,
        "right_to_wrong": None,
        "start": {"final_accuracy": s["heldout_accuracy_start"]},  # the warm start, shared by both arms
        "steps": steps,
        "sampled_tokens": sampled_tokens(run_dir),
        "wall_seconds": s["wall_seconds"],
        "run_dir": str(run_dir),
    }


def mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def table(seeds: list[dict]) -> str:
    def cell(v: float | None, key: str) -> str:
        return "-" if v is None else f"{v:.2f}" if key == "turns" else f"{v:.1%}"

    lines = [
        "| arm | seeds | RL steps | sampled tokens | start accuracy | " + " | ".join(METRICS) + " |",
        "|---|---|---|---|---|" + "---|" * len(METRICS),
    ]
    for arm in ("single_pass", "spoc"):
        rows = [s[arm] for s in seeds]
        cells = [cell(mean([r[k] for r in rows]), k) for k in METRICS]
        start = cell(mean([r["start"]["final_accuracy"] for r in rows]), "")
        steps = "/".join(str(r["steps"]) for r in rows)
        tokens = f"{mean([r['sampled_tokens'] for r in rows]):,.0f}"
        lines.append(f"| {arm} | {len(rows)} | {steps} | {tokens} | {start} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=100, help="SPOC's RL steps (the single-pass arm's follow from tokens)")
    p.add_argument("--terms", type=int, default=3)
    p.add_argument("--max-value", type=int, default=49)
    p.add_argument("--sft-steps", type=int, default=1000, help="the warm start both arms begin from")
    p.add_argument("--pair-questions", type=int, default=2048)
    p.add_argument("--pair-sft-steps", type=int, default=200)
    p.add_argument("--turn-cap", type=int, default=2)
    p.add_argument("--prompts", type=int, default=32, help="prompts per RL step")
    p.add_argument("--samples", type=int, default=8, help="samples per prompt")
    p.add_argument("--heldout", type=int, default=256)
    p.add_argument("--kl", type=float, default=0.05, help="KL to the policy RL starts from (both arms)")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--run-dir", default="", help="run folders (default: <out>/runs/spoc)")
    p.add_argument("--plot", default="docs/recipes/spoc.png", help="where the accuracy-vs-tokens plot goes")
    p.add_argument("--plot-only", action="store_true", help="redraw the plot from <out>/spoc.json, run nothing")
    p.add_argument("overrides", nargs="*", help="relayrl config overrides for both arms, e.g. mode=sync")
    args = p.parse_args()
    out = Path(args.out)
    if args.plot_only:
        plot(json.loads((out / "spoc.json").read_text())["seeds"], Path(args.plot))
        return
    solution = 12 * args.terms  # tokens for one solution: a line per step and the answer line
    common = [
        f"task.arithmetic.terms={args.terms}",
        f"task.arithmetic.max_value={args.max_value}",
        f"task.arithmetic.heldout_size={args.heldout}",
        f"sft.steps={args.sft_steps}",
        "sft.target_match=0",  # all of them: the warm start measured
        f"spoc.pair_questions={args.pair_questions}",
        f"spoc.pair_sft_steps={args.pair_sft_steps}",
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.samples_per_prompt={args.samples}",
        f"rollout.max_new_tokens={solution}",
        f"spoc.turn_cap={args.turn_cap}",
        f"spoc.max_new_tokens={min(224, args.turn_cap * (solution + 32))}",  # + verifications; 256 positions in all
        f"algorithm.kl_coef={args.kl}",
        f"run_dir={args.run_dir or out / 'runs' / 'spoc'}",
        *args.overrides,
    ]
    t0, seeds = time.perf_counter(), []
    for seed in args.seeds:
        arm_args = [*common, f"seed={seed}", f"name=seed{seed}"]
        spoc = spoc_arm(arm_args, args.steps)
        tokens_per_step = args.prompts * args.samples * spoc["pair_sft"]["mean_solution_tokens"]
        steps = max(1, round(spoc["sampled_tokens"] / tokens_per_step))
        warm = Path(spoc["run_dir"]) / "checkpoints" / "pair_sft"
        seeds.append({"seed": seed, "spoc": spoc, "single_pass": single_pass_arm(arm_args, steps, warm)})
        print(table(seeds), flush=True)
    result = {
        "spoc_final_accuracy": mean([s["spoc"]["final_accuracy"] for s in seeds]),
        "single_pass_final_accuracy": mean([s["single_pass"]["final_accuracy"] for s in seeds]),
        **{f"spoc_{k}": mean([s["spoc"][k] for s in seeds]) for k in METRICS[1:]},
        "spoc_sampled_tokens": mean([s["spoc"]["sampled_tokens"] for s in seeds]),
        "single_pass_sampled_tokens": mean([s["single_pass"]["sampled_tokens"] for s in seeds]),
        "command": shlex.join([".venv/bin/python", *sys.argv]),
        "overrides": common,
        "wall_seconds": time.perf_counter() - t0,
        "seeds": seeds,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "spoc.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "spoc.md").write_text(f"# SPOC vs single-pass RL\n\n`{result['command']}`\n\n{table(seeds)}\n")
    plot(seeds, Path(args.plot))
    print(f"wrote {out / 'spoc.json'}, {out / 'spoc.md'} and {args.plot}")


if __name__ == "__main__":
    main()
