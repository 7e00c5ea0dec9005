"""Several models or checkpoints on one task: a table, a plot and the per-item outputs."""

from __future__ import annotations

import json
from pathlib import Path

from relayrl.evaluation.evaluate import EvalResult
from relayrl.evaluation.report import plt


def label(model: str) -> str:
    """`runs/X/checkpoints/step_000150` -> `X/step_000150`; anything else keeps its last part."""
    p = Path(model)
    return f"{p.parent.parent.name}/{p.name}" if p.parent.name == "checkpoints" else p.name or model


def summary(model: str, task: str, result: EvalResult) -> dict:
    return {"model": model, "label": label(model), "task": task, "n": len(result.outputs)} | {
        name: {"value": v, "ci95": result.intervals[name]} for name, v in result.scores.items()
    }


def table(rows: list[dict]) -> str:
    metrics = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    lines = ["| model | n | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for r in rows:
        cells = [f"{r[m]['value']:.1%} ({r[m]['ci95'][0]:.1%}-{r[m]['ci95'][1]:.1%})" for m in metrics]
        lines.append(f"| {r['label']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(out_dir: Path, rows: list[dict], results: list[EvalResult]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for row, result in zip(rows, results, strict=True):
        with open(out_dir / f"{row['label'].replace('/', '__')}.jsonl", "w") as f:
            f.writelines(json.dumps(o) + "\n" for o in result.outputs)
    (out_dir / "eval.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out_dir / "compare.md").write_text(f"# Evaluation on {rows[0]['task']}\n\n{table(rows)}\n\n![](compare.png)\n")
    metrics = [k for k in rows[0] if isinstance(rows[0][k], dict)]
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
