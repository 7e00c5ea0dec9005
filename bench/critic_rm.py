"""A miniature reproduction of Critic-RM's claim: a reward model that critiques before it scores ranks held-out
preference pairs better than a scalar reward model of the same size.

Setting: `relayrl:arithmetic` preference pairs (chosen: the worked solution; rejected: the same with a wrong
final answer), so quality is checkable by a program. Both arms use the same tiny Llama size, the same training
and held-out pairs, the same `train` steps, batch and learning rate. The scalar RM trains Bradley-Terry on
prompt + response. The Critic-RM arm warms its LM on critiques a program writes, samples critiques of the
training pairs and filters them (stage 1), trains jointly on the kept ones (stage 2), and scores a held-out
response by the mean reward over M critiques it samples. Also reported: its accuracy with one critique, and
the critiques' own 'Score: N' as a judge (no head).

    .venv/bin/python bench/critic_rm.py [--seeds 0 1 2] [--quick] [key=value overrides, applied to both arms]

Writes `--out` (default bench/results/critic_rm.json; with --quick, critic_rm_quick.json): top-level
`critic_rm_accuracy` and `scalar_rm_accuracy` (means over seeds), per-seed figures, stage-1 kept/dropped
counts, timings, the settings and the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from relayrl.config import merge
from relayrl.training.critic_rm import train_critic_rm
from relayrl.training.reward_model import RMConfig, train_reward_model

FULL = {
    "data.synthetic_rows": 4096,  # 10% held out: 410 pairs
    "model.hidden": 64,
    "model.layers": 2,
    "model.heads": 2,
    "train.steps": 300,
    "train.batch_size": 32,
    "train.eval_every": 100,
    "critic.warm_steps": 600,
    "critic.pairs": 1024,
    "critic.samples": 4,
    "critic.critiques": 4,
}
QUICK = FULL | {
    "data.synthetic_rows": 640,
    "data.heldout_max": 48,
    "model.hidden": 48,
    "train.steps": 40,
    "train.eval_every": 40,
    "critic.warm_steps": 100,
    "critic.pairs": 64,
    "critic.samples": 2,
    "critic.critiques": 2,
}


def arm(kind: str, seed: int, settings: dict, overrides: list[str], folder: Path) -> dict:
    # the pairs and the held-out split follow the seed: the same for both arms
    run = {"kind": kind, "seed": seed, "data.seed": seed, "output": folder}
    cfg = merge(RMConfig, None, [f"{k}={v}" for k, v in (settings | run).items()] + overrides)
    start = time.perf_counter()
    metrics = (train_critic_rm if kind == "critic" else train_reward_model)(cfg, show_progress=False)
    metrics |= {"wall_seconds": time.perf_counter() - start, "config": dataclasses.asdict(cfg)}
    print(f"seed {seed} {kind}: held-out pair accuracy {metrics['heldout_pair_accuracy']:.3f}", flush=True)
    return metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="a smoke run of under a minute (one seed, tiny settings)")
    p.add_argument("--out", type=Path, help="default: bench/results/critic_rm.json (--quick: critic_rm_quick.json)")
    p.add_argument("overrides", nargs="*", help="dotted RMConfig overrides for both arms, e.g. model.hidden=128")
    args = p.parse_args()
    settings, seeds = (QUICK, args.seeds[:1]) if args.quick else (FULL, args.seeds)
    out = args.out or Path(__file__).parent / "results" / f"critic_rm{'_quick' if args.quick else ''}.json"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            critic = arm("critic", seed, settings, args.overrides, Path(tmp) / f"critic_{seed}")
            scalar = arm("scalar", seed, settings, args.overrides, Path(tmp) / f"scalar_{seed}")
            runs.append({"seed": seed, "critic_rm": critic, "scalar_rm": scalar})

    def mean(key: str, metric: str) -> float:
        return statistics.fmean(r[key][metric] for r in runs)

    result = {
        "critic_rm_accuracy": mean("critic_rm", "heldout_pair_accuracy"),
        "scalar_rm_accuracy": mean("scalar_rm", "heldout_pair_accuracy"),
        "critic_rm_accuracy_one_critique": mean("critic_rm", "heldout_pair_accuracy_one_critique"),
        "critic_score_accuracy": mean("critic_rm", "heldout_score_accuracy"),
        "heldout_pairs": runs[0]["scalar_rm"]["heldout_pairs"],
        "seeds": seeds,
        "stage1": [{"seed": r["seed"], **r["critic_rm"]["stage1"]} for r in runs],
        "wall_seconds": {
            "critic_rm": [r["critic_rm"]["wall_seconds"] for r in runs],
            "critic_rm_stages": [r["critic_rm"]["seconds"] for r in runs],
            "scalar_rm": [r["scalar_rm"]["wall_seconds"] for r in runs],
        },
        "quick": args.quick,
        "settings": settings,
        "overrides": args.overrides,
        "threads": torch.get_num_threads(),
        "runs": runs,
        "command": shlex.join([".venv/bin/python", "bench/critic_rm.py", *sys.argv[1:]]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"held-out pair accuracy over {len(seeds)} seed(s): Critic-RM {result['critic_rm_accuracy']:.3f}"
        f" (one critique {result['critic_rm_accuracy_one_critique']:.3f}, its own scores"
        f" {result['critic_score_accuracy']:.3f}), scalar RM {result['scalar_rm_accuracy']:.3f}; {out}"
    )


if __name__ == "__main__":
    main()
