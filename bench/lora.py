"""LoRA against full fine-tuning: the SmolLM2-135M-Instruct recipe (docs/recipes/smollm2.md) side by side, the same
task, batches and steps, each run in a fresh process so its peak memory is its own.

Run alone on the machine: .venv/bin/python bench/lora.py [--steps 20] [--ranks 16,64] (writes
bench/results/lora.json). Per setting: the peak resident memory of the controller's process (which holds the
trainer: weights, gradients, AdamW's moments) and of the generator's, the median step time, trained tokens/s, the
bytes and seconds of a weight sync, and the greedy held-out accuracy before and after RL. Top level:
`lora_peak_memory_ratio`, the rank-16 trainer's peak over full fine-tuning's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import gain, matmul_peak_gflops, save

RECIPE = ["relayrl/tasks/presets/rg_basic_arithmetic.yaml", "examples/smollm2_basic_arithmetic.yaml"]
# a run of `relayrl train` that reports its peak resident memory: its own (controller and trainer) and its
# children's (the generator process, joined before it returns)
CHILD = """
import json, resource, sys
from relayrl.cli import main
main(sys.argv[1:])
kib = {"trainer": resource.RUSAGE_SELF, "generator": resource.RUSAGE_CHILDREN}
print("PEAK " + json.dumps({k: resource.getrusage(v).ru_maxrss / 1024 for k, v in kib.items()}))
"""


def run(name: str, overrides: list[str], root: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "train", *RECIPE, *overrides, f"run_dir={root / name}"],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"{name}: {out.stderr[-3000:]}")
    peak = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("PEAK "))[5:])
    run_dir = next((root / name).iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step = [r["train_seconds"] + r["wait_seconds"] + r["sync_seconds"] for r in records]
    row = {
        "name": name,
        "peak_rss_trainer_mb": peak["trainer"],
        "peak_rss_generator_mb": peak["generator"],
        "step_seconds_median": statistics.median(step),
        "trained_tokens_per_second_median": statistics.median(r["tokens_per_second"] for r in records),
        "sync_bytes": records[-1]["sync_bytes"],
        "sync_seconds_median": statistics.median(r["sync_seconds"] for r in records),
        "train_reward_mean": statistics.mean(r["reward"] for r in records),
        "heldout": gain(summary),
        "overrides": overrides,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ranks", default="16,64")
    parser.add_argument("--full-lr", default="1e-5")  # the recipe's
    parser.add_argument("--lora-lr", default="1e-4")  # adapters learn at ~10x full fine-tuning's rate (peft, TRL)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    # no format SFT (the lenient verifier reads the last number), one evaluation at RL's start and one at its end
    common = [
        f"steps={args.steps}",
        f"eval_every={args.steps}",
        f"checkpoint_every={args.steps}",
        "sft.steps=0",
        f"task.reasoning_gym.heldout_size={args.heldout}",
    ]
    settings = {"full": [f"optim.lr={args.full_lr}"]}
    for r in map(int, args.ranks.split(",")):
        settings[f"lora_r{r}"] = [f"optim.lr={args.lora_lr}", f"model.lora.rank={r}", f"model.lora.alpha={2 * r}"]
    with tempfile.TemporaryDirectory() as root:
        rows = [run(name, common + extra, Path(root)) for name, extra in settings.items()]
    full, by_name = rows[0], {r["name"]: r for r in rows}
    first = f"lora_r{args.ranks.split(',')[0]}"
    result = {
        "lora_peak_memory_ratio": by_name[first]["peak_rss_trainer_mb"] / full["peak_rss_trainer_mb"],
        "headline_rank": int(first.removeprefix("lora_r")),
        "sync_bytes_ratio": by_name[first]["sync_bytes"] / full["sync_bytes"],
        "step_time_ratio": by_name[first]["step_seconds_median"] / full["step_seconds_median"],
        "matmul_peak_gflops": matmul_peak_gflops(),
        "rows": rows,
    }
    save(result, args.out, "lora")


if __name__ == "__main__":
    main()
