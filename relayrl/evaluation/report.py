"""The end-of-run report: summary.json, report.md and a PNG of reward, held-out accuracy, throughput, staleness."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot(records: list[dict], path: Path) -> None:
    """Reward (and its running mean) with held-out accuracy (and, for a run rewarded by a model or judge, its
    held-out reward and the gap to the gold); below, throughput and staleness per step."""
    fig, (ax, speed, stale) = plt.subplots(3, 1, figsize=(7, 7), sharex=True, height_ratios=(2, 1, 1))
    rows = [r for r in records if "reward" in r]
    steps, rewards = [r["step"] for r in rows], [r["reward"] for r in rows]
    # a reward model's logits are not in [0, 1]: they get their own axis
    rax = ax if all(0 <= v <= 1 for v in rewards) else ax.twinx()
    rax.plot(steps, rewards, label="train reward", alpha=0.35)
    window = max(1, len(rewards) // 10)
    running = [sum(rewards[max(0, i + 1 - window) : i + 1]) / min(window, i + 1) for i in range(len(rewards))]
    rax.plot(steps, running, label=f"train reward, mean of {window} steps")
    evals = [r for r in records if "heldout_accuracy" in r]
    ax.plot([r["step"] for r in evals], [r["heldout_accuracy"] for r in evals], "o-", label="held-out accuracy")
    audited = [r for r in evals if r.get("heldout_reward") is not None]  # a run rewarded by a model or judge
    low = 0.0
    if audited:
        ax.lines[-1].set_label("held-out accuracy (gold: the task's verifier)")
        at = [r["step"] for r in audited]
        ax.plot(at, [r["heldout_reward"] for r in audited], "s-", label="held-out reward (the run's judge)")
        gaps = [r["heldout_gold_gap"] for r in audited]
        ax.plot(at, gaps, "^--", label="gap: judge - gold")
        low = min(0.0, *gaps)
    ax.set_ylim(low, 1)
    handles = [h for a in dict.fromkeys((ax, rax)) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, fontsize="small")
    speed.plot(steps, [r.get("tokens_per_second", 0.0) for r in rows])
    speed.set_ylabel("trained tok/s")
    stale.plot(steps, [r.get("staleness", 0.0) for r in rows], drawstyle="steps-mid")
    stale.set_ylabel("staleness")
    stale.set_xlabel("RL step")
    for a in (ax, speed, stale):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def start_record(summary: dict) -> dict:
    """The held-out evaluation at RL's start as a metrics record of step 0 (metrics.jsonl begins at step 1)."""
    return {"step": 0, "heldout_accuracy": summary["heldout_accuracy_start"], **summary.get("heldout_audit_start", {})}


def write(run_dir: Path, records: list[dict], summary: dict) -> None:
    """report.png, report.md, then summary.json, renamed into place last: it marks a finished run's report."""
    s = summary
    plot([start_record(s), *records], run_dir / "report.png")  # the held-out curve starts where RL did
    lines = [
        f"# relayrl run: {run_dir.name}",
        "",
        f"Task `{s['task']}`, model `{s['model']}`, mode **{s['mode']}**, {s['steps']} RL steps "
        f"in {s['rl_seconds']:.0f} s; {s['wall_seconds']:.0f} s in all, "
        f"SFT warm start ({s['sft_seconds']:.0f} s) included.",
        "",
        "| held-out accuracy (greedy) | value | 95% CI |",
        "|---|---|---|",
        f"| after SFT, before RL | {s['heldout_accuracy_start']:.1%} | {_ci(s['heldout_interval_start'])} |",
        f"| after RL | {s['heldout_accuracy_end']:.1%} | {_ci(s['heldout_interval_end'])} |",
        "",
        f"Trained tokens per second: {s['trained_tokens_per_second']:.0f}. "
        f"Stale rollouts dropped: {s['dropped_stale']}. Reward failures: {s['reward_failures']}.",
        "",
        *_messages_table(s["heldout_messages_start"], s["heldout_messages_end"]),
        "![reward, held-out accuracy, throughput and staleness](report.png)",
        "",
    ]
    (run_dir / "report.md").write_text("\n".join(lines))
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(run_dir / "summary.json")


def _messages_table(start: dict, end: dict) -> list[str]:
    """SPOC's self-correction metrics, or an environment's tool calls per episode (greedy, held out), before and after
    RL; nothing for other runs."""
    if not end:
        return []

    def cell(key: str, v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}" if key in ("turns", "tool_calls") else f"{v:.1%}"

    rows = [f"| {k} | {cell(k, start.get(k))} | {cell(k, v)} |" for k, v in end.items()]
    title = "tool use" if "tool_calls" in end else "self-correction"
    return [f"| {title} (held-out, greedy) | before RL | after RL |", "|---|---|---|", *rows, ""]


def _ci(interval) -> str:
    return f"{interval[0]:.1%} - {interval[1]:.1%}"
