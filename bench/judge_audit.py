"""A miniature gold-judge audit: a policy RL-trained against a small learned judge (a Bradley-Terry reward model),
its held-out greedy completions scored at every evaluation by that judge and by the task's programmatic verifier
(the gold), and the gap between the two over training.

Setting: the embedded default (tiny Llama, `relayrl:arithmetic`). The judge is `relayrl rm train`'s scalar reward
model on the same task's preference pairs (chosen: the worked solution; rejected: the same with a wrong final
answer); its logit goes through a sigmoid so that judge and gold are both in [0, 1]. A baseline policy with the
same settings is rewarded by the gold verifier itself, to show what the judge's reward bought.

    .venv/bin/python bench/judge_audit.py [--rm-steps 300] [--no-baseline] [key=value overrides for both runs]

Writes bench/results/judge_audit.json (top-level `final_gold_accuracy`, `final_judge_score`, `final_gap`,
`gap_change` and the baseline's `baseline_final_gold_accuracy`; every evaluation's figures in `curve`) and the
plot docs/recipes/judge_audit.png.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import save, save_plot

from relayrl.config import load_config, merge
from relayrl.controller import train
from relayrl.evaluation.report import start_record
from relayrl.tracking import read_jsonl
from relayrl.training.reward_model import RMConfig, train_reward_model


def run(folder: Path, overrides: list[str]) -> tuple[list[dict], dict]:
    """One RL run: its evaluations (step 0 from the summary, then each `eval_every`) and its summary."""
    run_dir = train(load_config(None, [f"run_dir={folder}", *overrides]), show_progress=False)
    records, s = read_jsonl(run_dir / "metrics.jsonl"), json.loads((run_dir / "summary.json").read_text())
    evals = [start_record(s)] + [
        {k: r[k] for k in ("step", "heldout_accuracy", "heldout_reward", "heldout_gold_gap") if r.get(k) is not None}
        for r in records
        if "heldout_accuracy" in r
    ]
    rewards = [{"step": r["step"], "reward": r["reward"]} for r in records if "reward" in r]
    return evals, {"summary": s, "train_reward": rewards}


def plot(curve: list[dict], baseline: list[dict] | None, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [e["step"] for e in curve]
    ax.plot(steps, [e["heldout_reward"] for e in curve], "s-", label="judge's score (learned reward model)")
    ax.plot(steps, [e["heldout_accuracy"] for e in curve], "o-", label="gold accuracy (the task's verifier)")
    ax.plot(steps, [e["heldout_gold_gap"] for e in curve], "^--", label="gap: judge - gold")
    if baseline:
        ax.plot(
            [e["step"] for e in baseline],
            [e["heldout_accuracy"] for e in baseline],
            "o:",
            color="grey",
            label="gold accuracy, policy rewarded by the verifier",
        )
    ax.axhline(0, color="black", linewidth=0.5)
    save_plot(fig, ax, path, "RL step", "held-out, greedy")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rm-steps", type=int, default=300, help="the judge's Bradley-Terry training steps")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--no-baseline", action="store_true", help="skip the policy rewarded by the verifier")
    p.add_argument("--work", type=Path, help="keep the judge and the runs here (default: a temporary folder)")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--plot", type=Path, default=Path("docs/recipes/judge_audit.png"))
    p.add_argument("overrides", nargs="*", help="dotted config overrides for both RL runs, e.g. steps=100")
    args = p.parse_args()
    common = [f"eval_every={args.eval_every}", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        rm = work / "judge"
        rm_cfg = merge(
            RMConfig, None, [f"train.steps={args.rm_steps}", f"train.eval_every={args.rm_steps}", f"output={rm}"]
        )
        rm_metrics = train_reward_model(rm_cfg, show_progress=False)
        print(f"judge: held-out pair accuracy {rm_metrics['heldout_pair_accuracy']:.3f}", flush=True)
        judged = ["reward.source=reward_model", f"reward.model={rm}"]
        curve, judged_run = run(work / "judged", [*judged, *common])
        baseline, gold_run = (None, None) if args.no_baseline else run(work / "gold", common)
    first, last = curve[0], curve[-1]
    result = {
        "final_gold_accuracy": last["heldout_accuracy"],
        "final_judge_score": last["heldout_reward"],
        "final_gap": last["heldout_gold_gap"],
        "start_gap": first["heldout_gold_gap"],
        "gap_change": last["heldout_gold_gap"] - first["heldout_gold_gap"],
        "gold_accuracy_gain": last["heldout_accuracy"] - first["heldout_accuracy"],
        "baseline_final_gold_accuracy": baseline[-1]["heldout_accuracy"] if baseline else None,
        "judge_heldout_pair_accuracy": rm_metrics["heldout_pair_accuracy"],
        "curve": curve,
        "baseline_curve": baseline,
        "rows": {"judged_run": judged_run, "baseline_run": gold_run},  # summaries and train rewards, not printed
        "overrides": common,
    }
    plot(curve, baseline, args.plot)
    save(result, args.out, "judge_audit")


if __name__ == "__main__":
    main()
