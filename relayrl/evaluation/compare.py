"""Several models or checkpoints on one task: a table, a plot and the per-item outputs."""

from __future__ import annotations

import json
from pathlib import Path

from relayrl.evaluation.evaluate import EvalResult
from relayrl.evaluation.metrics import mean_interval
from relayrl.evaluation.report import plt


def label(model: str) -> str:
    """`runs/X/checkpoints/step_000150` -> `X/step_000150`; anything else keeps its last part."""
    p = Path(model)
    return f"{p.parent.parent.name}/{p.name}" if p.parent.name == "checkpoints" else p.name or model


def summary(model: str, task: str, result: EvalResult, first: EvalResult | None = None) -> dict:
    """One model's scores; given the first model's result on the same items, also its paired greedy gain."""
    row = {"model": model, "label": label(model), "task": task, "n": len(result.outputs)} | {
        name: {"value": v, "ci95": result.intervals[name]} for name, v in result.scores.items()
    }
    return row | ({GAIN: paired_gain(result, first)} if first is not None else {})


GAIN = "greedy gain vs first"


def paired_gain(result: EvalResult, first: EvalResult) -> dict:
    """Greedy pass@1 minus `first`'s, item by item: its interval is far narrower than the two accuracies' own,
    since both models meet the same items (what separates a real gain from held-out sampling noise)."""
    diffs = [
        float(a["greedy_correct"] >= 1.0) - float(b["greedy_correct"] >= 1.0)
        for a, b in zip(result.outputs, first.outputs, strict=True)
    ]
    return {"value": sum(diffs) / len(diffs), "ci95": mean_interval(diffs, bounds=(-1.0, 1.0))}


def _cell(metric: dict, signed: bool) -> str:
    (lo, hi), f, to = metric["ci95"], "+.1%" if signed else ".1%", " to " if signed else "-"
    return f"{metric['value']:{f}} ({lo:{f}}{to}{hi:{f}})"


def table(rows: list[dict]) -> str:
    metrics = list(dict.fromkeys(k for r in rows for k in r if isinstance(r[k], dict)))
    lines = ["| model | n | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for r in rows:
        cells = [_cell(r[m], signed=m == GAIN) if m in r else "-" for m in metrics]
        lines.append(f"| {r['label']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(out_dir: Path, rows: list[dict], results: list[EvalResult]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for row, result in zip(rows, results, strict=True):
        with open(out_dir / f"{row['label'].replace('/', '__')}.jsonl", "w") as f:
            f.writelines(json.dumps(o) + "\n" for o in result.outputs)
    (out_dir / "eval.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out_dir / "compare.md").write_text(f"# Evaluation on {rows[0]['task']}\n\n{table(rows)}\n\n![](compare.png)\n")
    metrics = [k for k in rows[0] if isinstance(rows[0][k], dict)]  # accuracies; the gains are in the table
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(metrics) * len(rows) ** 0.5, 4))
    for i, r in enumerate(rows):
        values = [r[m]["value"] for m in metrics]
        errors = [
            [v - r[m]["ci95"][0] for v, m in zip(values, metrics, strict=True)],
            [r[m]["ci95"][1] - v for v, m in zip(values, metrics, strict=True)],
        ]
        ax.bar([j + i * width for j in range(len(metrics))], values, width, yerr=errors, capsize=3, label=r["label"])
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% CI)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out_dir / "compare.png", dpi=100)
    plt.close(fig)
