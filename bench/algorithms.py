"""The algorithms by name side by side on the embedded default task: held-out accuracy over RL and trained tokens/s.

Run alone on the machine (about 6 minutes a run on 2 cores, 12 algorithms x 3 seeds: ~3.6 hours):
    .venv/bin/python bench/algorithms.py [--algorithms grpo,dapo,... --seeds 0,1,2 --set key=value ...]
Each run is `relayrl train <the algorithm's settings (relayrl/algorithms/named.py)> seed=N` in a fresh process, with
the same prompts and samples per step (DAPO's dynamic sampling draws more: its rows count what it sampled). Per run:
held-out accuracy at RL's start and end, the gain in points, the held-out curve, trained tokens/s, rollouts sampled,
and the critic's share of the trainer's time (PPO-GAE).
Top level: `algorithms` (the list), per algorithm the mean and range of its gain over seeds, and `best` (the
algorithm of the largest mean gain). Writes bench/results/algorithms.json and the plot docs/algorithms.png.
`--set` adds overrides to every run (a smoke test: --set steps=2 sft.steps=5 ...).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).parent))
from common import gain, save, save_plot

from relayrl.algorithms.named import NAMED
from relayrl.config import load_config
from relayrl.tracking import read_jsonl


def run(name: str, seed: int, extra: list[str], root: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "relayrl.cli", "train", *NAMED[name], *extra, f"seed={seed}", f"run_dir={root}"],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"{name}, seed {seed}: {out.stderr[-2000:]}")
    run_dir = next(p for p in root.iterdir() if p.is_dir())
    s, records = json.loads((run_dir / "summary.json").read_text()), read_jsonl(run_dir / "metrics.jsonl")
    r = load_config(str(run_dir / "config.yaml")).rollout
    batches = sum(m.get("sampled_batches", 1) for m in records)  # DAPO's dynamic sampling draws more than one
    row = {
        "algorithm": name,
        "seed": seed,
        **gain(s),
        "curve": [{"step": 0, "heldout_accuracy": s["heldout_accuracy_start"]}]
        + [{"step": m["step"], "heldout_accuracy": m["heldout_accuracy"]} for m in records if "heldout_accuracy" in m],
        "trained_tokens_per_second": s["trained_tokens_per_second"],
        "rollouts_sampled": batches * r.prompts_per_step * r.samples_per_prompt,
        "rollouts_trained": s["rollouts_trained"],
        "rl_s": s["rl_seconds"],
        # PPO-GAE: the critic's forward, backward and update, and their share of the trainer's time
        "value_s": sum(m.get("value_seconds", 0.0) for m in records),
        "value_share": sum(m.get("value_seconds", 0.0) for m in records) / sum(m["train_seconds"] for m in records),
    }
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    return row


def summary(rows: list[dict]) -> dict:
    names = list(dict.fromkeys(r["algorithm"] for r in rows))
    per = {}
    for name in names:
        mine = [r for r in rows if r["algorithm"] == name]
        gains = [r["gain_points"] for r in mine]
        per[name] = {
            "seeds": len(mine),
            "mean_gain_points": statistics.fmean(gains),
            "gain_range": [min(gains), max(gains)],
            "mean_end": statistics.fmean(r["end"] for r in mine),
            "trained_tokens_per_second": statistics.fmean(r["trained_tokens_per_second"] for r in mine),
            "rollouts_sampled": statistics.fmean(r["rollouts_sampled"] for r in mine),
            "value_share": statistics.fmean(r["value_share"] for r in mine),
        }
    best = max(names, key=lambda n: per[n]["mean_gain_points"])
    return {
        "algorithms": names,
        "best": {"name": best, "mean_gain_points": per[best]["mean_gain_points"]},
        "per_algorithm": per,
        "rows": rows,
    }


def plot(rows: list[dict], path: Path) -> None:
    """Each algorithm's held-out accuracy against RL step, the mean over its seeds."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in dict.fromkeys(r["algorithm"] for r in rows):
        curves = [r["curve"] for r in rows if r["algorithm"] == name]
        steps = [e["step"] for e in curves[0]]
        ax.plot(
            steps,
            [statistics.fmean(c[i]["heldout_accuracy"] for c in curves) for i in range(len(steps))],
            "o-",
            label=name,
        )
    save_plot(fig, ax, path, "RL step", f"held-out accuracy, mean of {len(curves)} seeds")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithms", default=",".join(NAMED))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", nargs="*", default=[], help="overrides added to every run")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--plot", type=Path, default=Path("docs/algorithms.png"))
    args = p.parse_args()
    rows = []
    for name in args.algorithms.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            with tempfile.TemporaryDirectory(prefix="relayrl-algorithms-") as tmp:
                rows.append(run(name, seed, args.set, Path(tmp)))
            save(summary(rows), args.out, "algorithms")  # after every run: a stopped bench keeps its rows
    plot(rows, args.plot)


if __name__ == "__main__":
    main()
