"""Test-time scaling on the arithmetic task: accuracy against tokens spent for single sample, majority vote,
best-of-N, Recursive Tournament Voting and Parallel-Distill-Refine, at several N.

The policy is a trained checkpoint (e.g. the embedded default's last one) and the judge a small Bradley-Terry
reward model (`relayrl rm train`): it scores candidates for best-of-N, weighted majority and PDR's ranking, and
decides tournament matches by its preference sigmoid(r_b - r_a). An oracle best-of-N (the task's verifier as the
scorer) gives the pass@N ceiling. All methods share each item's N candidates (`relayrl tts`).

    .venv/bin/python bench/tts_scaling.py POLICY REWARD_MODEL [--n 1 2 4 8 16] [key=value overrides]

Writes bench/results/tts.json (top-level `best_accuracy_at_max_n` and the method reaching it, `single_accuracy`,
and per N every method's accuracy and tokens per item) and the plot docs/recipes/tts.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import save, save_plot

from relayrl.config import load_config
from relayrl.models import TinySize, load_model_and_tokenizer
from relayrl.tts.evaluate import evaluate_tts

MARKERS = {"single": "o", "majority": "s", "weighted_majority": "D", "best_of_n": "^", "tournament": "v", "pdr": "P"}


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in [*MARKERS, "oracle"]:
        points = sorted((r["tokens_per_item"], r["accuracy"], r["n"]) for r in rows if r["method"] == method)
        if not points:
            continue
        style = ":" if method == "oracle" else "-"
        label = "best-of-N by the verifier (pass@N)" if method == "oracle" else method
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker=MARKERS.get(method, "x"), label=label)
    ax.set_xscale("log")
    save_plot(fig, ax, path, "tokens per question (generation + judge)", "held-out accuracy")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("policy", help="a trained checkpoint folder")
    p.add_argument("reward_model", help="a `relayrl rm train` folder: the scorer and the tournament's judge")
    p.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--out", default="bench/results")
    p.add_argument("--plot", type=Path, default=Path("docs/recipes/tts.png"))
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. tts.items=128")
    args = p.parse_intermixed_args()
    judge = [f"reward.model={args.reward_model}", "tts.scorer=reward_model", "tts.match=reward_model"]
    cfg = load_config(None, [*judge, *args.overrides])
    size = TinySize(cfg.model.hidden, cfg.model.layers, cfg.model.heads)
    model, tokenizer = load_model_and_tokenizer(args.policy, size, cfg.seed)
    rows = []
    for n in args.n:
        report = evaluate_tts(load_config(None, [*judge, *args.overrides, f"tts.n={n}"]), args.policy, model, tokenizer)
        oracle = ["tts.scorer=verifier", "tts.methods=[best_of_n]", f"tts.n={n}"]  # the same candidates (same seed)
        ceiling = evaluate_tts(load_config(None, [*judge, *args.overrides, *oracle]), args.policy, model, tokenizer)
        rows += [{"n": n, "method": method} | r for method, r in report["methods"].items()]
        rows.append({"n": n, "method": "oracle"} | ceiling["methods"]["best_of_n"])
        print(f"N={n}: " + ", ".join(f"{r['method']} {r['accuracy']:.3f}" for r in rows if r["n"] == n), flush=True)
    top = max(args.n)
    best = max((r for r in rows if r["n"] == top and r["method"] != "oracle"), key=lambda r: r["accuracy"])
    result = {
        "best_accuracy_at_max_n": best["accuracy"],
        "best_method_at_max_n": best["method"],
        "single_accuracy": next(r["accuracy"] for r in rows if r["method"] == "single" and r["n"] == top),
        "oracle_accuracy_at_max_n": next(r["accuracy"] for r in rows if r["method"] == "oracle" and r["n"] == top),
        "max_n": top,
        "items": report["items"],
        "task": report["task"],
        "policy": args.policy,
        "judge": report["judge"],
        "tts": report["tts"],
        "table": [{k: r[k] for k in ("n", "method", "accuracy", "ci95", "tokens_per_item")} for r in rows],
        "rows": rows,
    }
    plot(rows, args.plot)
    save(result, args.out, "tts")


if __name__ == "__main__":
    main()
