"""A `relayrl train` command over seeds and CPU kernels: by default the README's main command (the embedded default).

Run alone on the machine: .venv/bin/python bench/default_seeds.py [CONFIG.yaml ...] [--seeds 0,1,2,3,4
--capabilities default,avx2 --name default_seeds] (writes bench/results/<name>.json after every run; `--resume`
keeps the runs already there and runs the others). Each run is
`relayrl train CONFIG... seed=N` with a run folder of its own, in a fresh process whose `ATEN_CPU_CAPABILITY` picks
torch's kernels: `default` and `avx2` sum floats in other orders, as another CPU would; `native` leaves torch's
choice. Per run: held-out accuracy at RL's start and end, the gain in points, the wall time; top level the
smallest and mean gain, the largest wall time, and the largest scaled to a 200 GFLOP/s machine (each row by the
matmul peak measured when its session began).

The SmolLM2 recipe over 3 seeds (docs/recipes/smollm2.md; about 41 minutes a seed):
    .venv/bin/python bench/default_seeds.py relayrl/tasks/presets/rg_basic_arithmetic.yaml \
        examples/smollm2_basic_arithmetic.yaml --seeds 0,1,2 --capabilities native --name smollm2_seeds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import gain, save
from matmul_peak import gflops


def run(configs: list[str], seed: int, capability: str, root: Path, peak: float) -> dict:
    env = os.environ | ({} if capability == "native" else {"ATEN_CPU_CAPABILITY": capability})
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "relayrl.cli", "train", *configs, f"seed={seed}", f"run_dir={root}"],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(f"seed {seed}, {capability}: {out.stderr[-2000:]}")
    run_dir = next(p for p in root.iterdir() if p.is_dir())
    s = json.loads((run_dir / "summary.json").read_text())
    row = {
        "seed": seed,
        "capability": capability,
        **gain(s),
        "wall_s": wall,
        "sft_steps": s.get("sft_steps"),
        "sft_s": s["sft_seconds"],
        "rl_s": s["rl_seconds"],
        "matmul_peak_gflops": peak,  # measured when this session of the bench began: its wall time scales by it
    }
    print(json.dumps(row), flush=True)
    return row


def summary(rows: list[dict]) -> dict:
    """Rows marked `shared_cores` (by hand: the bench cannot tell) ran beside other work: their wall times are
    left out of the scaled maximum."""
    alone = [r for r in rows if not r.get("shared_cores")] or rows
    return {
        "min_gain_points": min(r["gain_points"] for r in rows),
        "mean_gain_points": sum(r["gain_points"] for r in rows) / len(rows),
        "max_wall_s": max(r["wall_s"] for r in rows),
        "max_wall_s_alone": max(r["wall_s"] for r in alone),
        "max_wall_s_at_200_gflops": max(r["wall_s"] * r["matmul_peak_gflops"] / 200 for r in alone),
        "start_range": [min(r["start"] for r in rows), max(r["start"] for r in rows)],
        "end_range": [min(r["end"] for r in rows), max(r["end"] for r in rows)],
        "runs_with_gain_20_or_more": sum(r["gain_points"] >= 20 for r in rows),
        "runs": len(rows),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("configs", nargs="*", help="YAML configs of the command (none: the embedded default)")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--capabilities", default="default,avx2")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--name", default="default_seeds", help="the result's file name, without .json")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the result; run the rest")
    args = parser.parse_args()
    peak = gflops(os.cpu_count() or 1)  # this machine's, measured now: the wall times scale by it
    result = Path(args.out) / f"{args.name}.json"
    rows = json.loads(result.read_text())["rows"] if args.resume and result.exists() else []
    done = {(r["seed"], r["capability"]) for r in rows}
    for capability in args.capabilities.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            if (seed, capability) in done:
                continue
            with tempfile.TemporaryDirectory(prefix="relayrl-default-") as tmp:
                rows.append(run(args.configs, seed, capability, Path(tmp), peak))
            save(summary(rows), args.out, args.name)  # after every run: a stopped bench keeps its rows


if __name__ == "__main__":
    main()
