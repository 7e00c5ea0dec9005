"""The algorithms by name side by side on the embedded default task: held-out accuracy over RL and trained tokens/s.

Run alone on the machine (about 4 minutes a run on 2 cores, 12 algorithms x 3 seeds: ~2.5 hours; `--resume` keeps
the runs already in the result and runs the others):
    .venv/bin/python bench/algorithms.py [--algorithms grpo,dapo,... --seeds 0,1,2 --set key=value ... --resume]
Each seed's warm start is made once (`relayrl train seed=N steps=1`, kept in --run-dir) and every algorithm starts
RL from it: `relayrl train <the algorithm's settings (relayrl/algorithms/named.py)> seed=N model.name_or_path=<its
sft checkpoint> sft.steps=0`, in a fresh process, so the algorithms of a seed start from the same model and draw the
same prompts and samples per step (DAPO's dynamic sampling draws more: its rows count what it sampled). Per run:
held-out accuracy at RL's start and end, the gain in points, the held-out curve, trained tokens/s, rollouts sampled,
and the critic's share of the trainer's time (PPO-GAE).
Top level: `algorithms` (the list), per algorithm the mean and range of its gain over seeds, and `best` (the
algorithm of the largest mean gain). Writes bench/results/algorithms.json and the plot docs/algorithms.png.
`--set` adds YAML files and overrides to every run (a smoke test: --set steps=2 sft.steps=5 ...). The SmolLM2 runs
beside its recipe (docs/recipes/smollm2.md; about an hour alone):
    .venv/bin/python bench/algorithms.py --algorithms aipo,ppo_gae,dapo --seeds 0 --set \
        relayrl/tasks/presets/rg_basic_arithmetic.yaml examples/smollm2_basic_arithmetic.yaml steps=20 eval_every=20 \
        --name smollm2_algorithms --plot docs/recipes/smollm2_algorithms.png --run-dir /tmp/smollm2_algorithms_runs
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def train(overrides: list[str], root: Path, what: str) -> Path:
    """`relayrl train` in a fresh process; its run folder."""
    out = subprocess.run(
        [sys.executable, "-m", "relayrl.cli", "train", *overrides, f"run_dir={root}"], capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"{what}: {out.stderr[-2000:]}")
    return next(p for p in root.iterdir() if p.is_dir())


def warm_start(seed: int, extra: list[str], runs: Path) -> Path:
    """The seed's SFT checkpoint, made once: what every algorithm's RL starts from."""
    root = runs / f"warm-{seed}"
    finished = next(root.glob("*/summary.json"), None) if root.exists() else None  # its sft checkpoint is whole
    if finished:
        return finished.parent / "checkpoints" / "sft"
    shutil.rmtree(root, ignore_errors=True)  # a warm start stopped part-way
    run_dir = train([*extra, f"seed={seed}", "steps=1", "mode=sync"], root, f"warm start, seed {seed}")
    return run_dir / "checkpoints" / "sft"


def run(name: str, seed: int, extra: list[str], warm: Path, root: Path) -> dict:
    start = [f"model.name_or_path={warm}", "sft.steps=0"]
    run_dir = train([*NAMED[name], *extra, *start, f"seed={seed}"], root, f"{name}, seed {seed}")
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
    for line, name in enumerate(dict.fromkeys(r["algorithm"] for r in rows)):
        curves = [r["curve"] for r in rows if r["algorithm"] == name]
        steps = [e["step"] for e in curves[0]]
        ax.plot(
            steps,
            [statistics.fmean(c[i]["heldout_accuracy"] for c in curves) for i in range(len(steps))],
            ("o-", "s--", "^:")[line // 10 % 3],  # the colour cycle has 10 colours: a line style tells the 11th apart
            label=name,
        )
    save_plot(fig, ax, path, "RL step", f"held-out accuracy, mean of {len(curves)} seeds")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithms", default=",".join(NAMED))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", nargs="*", default=[], help="YAML files and overrides added to every run")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default="algorithms", help="the result's file name, without .json")
    p.add_argument("--plot", type=Path, default=Path("docs/algorithms.png"))
    p.add_argument("--run-dir", type=Path, default=Path("/tmp/algorithms_runs"), help="where the warm starts are kept")
    p.add_argument("--resume", action="store_true", help="keep the runs already in the result; run the others")
    args = p.parse_args()
    result = Path(args.out) / f"{args.name}.json"
    rows = json.loads(result.read_text())["rows"] if args.resume and result.exists() else []
    done = {(r["algorithm"], r["seed"]) for r in rows}
    for seed in (int(s) for s in args.seeds.split(",")):  # seed by seed: a stopped bench has every algorithm's
        warm = warm_start(seed, args.set, args.run_dir)
        for name in args.algorithms.split(","):
            if (name, seed) in done:
                continue
            with tempfile.TemporaryDirectory(prefix="relayrl-algorithms-") as tmp:
                rows.append(run(name, seed, args.set, warm, Path(tmp)))
            save(summary(rows), args.out, args.name)  # after every run: a stopped bench keeps its rows
    plot(rows, args.plot)


if __name__ == "__main__":
    main()
