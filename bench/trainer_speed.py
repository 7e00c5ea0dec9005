"""Trainer speed and peak memory on a real-size model, by micro-batch token budget.

One RL trainer step (AIPO, 32 sequences shaped like TRL's benchmark: 60 prompt tokens, 30-96 completion
tokens) on SmolLM2-135M-Instruct (`relayrl models import smollm2-135m-instruct` first; or any `--model`),
each budget in a fresh process so its peak RSS is its own. Reports trained tokens/s, the achieved GFLOP/s
(6 x parameters x tokens, attention left out) as a share of the machine's matmul peak
(bench/results/matmul_peak.json), and peak RSS.

    .venv/bin/python bench/trainer_speed.py [--model DIR] [--budgets 16384 4096 2048 1024 512]

Writes bench/results/trainer_speed.json (top-level `speedup`: the best budget's tokens/s over 16384's, and
`best_peak_rss_gb`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from common import matmul_peak_gflops, save

from relayrl.model_import import default_dir


def one(model: str, budget: int) -> dict:
    import torch

    from relayrl.models import load_model_and_tokenizer
    from relayrl.training.trainer import AlgorithmConfig, OptimConfig, Sequence, Trainer

    torch.set_num_threads(2)
    m, tok = load_model_and_tokenizer(model)
    g = torch.Generator().manual_seed(0)
    seqs = []
    for _ in range(32):
        p = torch.randint(100, 40000, (60,), generator=g).tolist()
        c = torch.randint(100, 40000, (int(torch.randint(30, 97, (1,), generator=g)),), generator=g).tolist()
        seqs.append(Sequence(p, c, [-1.0] * len(c), [0.5] * len(c)))
    trainer = Trainer(m, OptimConfig(lr=1e-6, micro_batch_tokens=budget), AlgorithmConfig(), tok.pad_token_id, 0.7)
    tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in seqs)
    trainer.step(seqs)  # warm-up: allocations, AdamW state
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        trainer.step(seqs)
        times.append(time.perf_counter() - t0)
    seconds = min(times)
    params = sum(p.numel() for p in m.parameters())
    return {
        "budget": budget,
        "step_seconds": seconds,
        "tokens": tokens,
        "tokens_per_second": tokens / seconds,
        "gflops": 6 * params * tokens / seconds / 1e9,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(default_dir("smollm2-135m-instruct")))
    p.add_argument("--budgets", type=int, nargs="+", default=[16384, 4096, 2048, 1024, 512])
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one budget in this process
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.model, args.one)))
        return
    peak_gflops = matmul_peak_gflops()
    rows = []
    for budget in args.budgets:
        cmd = [sys.executable, __file__, "--model", args.model, "--one", str(budget)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        row["share_of_matmul_peak"] = row["gflops"] / peak_gflops
        rows.append(row)
        print(
            f"budget {budget:>6}: {row['step_seconds']:.1f} s, {row['tokens_per_second']:.0f} tok/s, "
            f"{row['gflops']:.0f} GFLOP/s ({row['share_of_matmul_peak']:.0%} of peak), "
            f"peak RSS {row['peak_rss_gb']:.1f} GB",
            flush=True,
        )
    base = next(r for r in rows if r["budget"] == 16384) if 16384 in args.budgets else rows[0]
    best = max(rows, key=lambda r: r["tokens_per_second"])
    result = {
        "speedup": best["tokens_per_second"] / base["tokens_per_second"],
        "best_budget": best["budget"],
        "best_tokens_per_second": best["tokens_per_second"],
        "best_peak_rss_gb": best["peak_rss_gb"],
        "matmul_peak_gflops": peak_gflops,
        "model": args.model,
        "rows": rows,
    }
    save(result, args.out, "trainer_speed")


if __name__ == "__main__":
    main()
