"""Trainer speed and peak memory on a real-size model, by micro-batch token budget, and with shared prompts.

One RL trainer step (AIPO, 32 sequences shaped like TRL's benchmark: 60 prompt tokens, 30-96 completion
tokens) on SmolLM2-135M-Instruct (`relayrl models import smollm2-135m-instruct` first; or any `--model`),
each setting in a fresh process so its peak RSS is its own. First 32 distinct prompts at each budget; then
GRPO's shape, 4 prompts x 8 samples, at the best budget with `optim.share_prompts` off and on (on: each
prompt runs through the model once, its KV cache shared by its 8 rows). Reports trained tokens/s (prompt +
completion of every sequence), the achieved GFLOP/s (6 x parameters x tokens the model actually runs,
attention left out) as a share of the machine's matmul peak (bench/results/matmul_peak.json), and peak RSS.

    .venv/bin/python bench/trainer_speed.py [--model DIR] [--budgets 16384 4096 2048 1024 512]

Writes bench/results/trainer_speed.json (top-level `speedup`: the best budget's tokens/s over 16384's,
`prompt_sharing_speedup`: shared over unshared trained tokens/s on the GRPO shape, and `best_peak_rss_gb`).
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


def one(model: str, budget: int, samples_per_prompt: int, share: bool) -> dict:
    import torch

    from relayrl.models import load_model_and_tokenizer
    from relayrl.training.trainer import AlgorithmConfig, OptimConfig, Sequence, Trainer

    torch.set_num_threads(2)
    m, tok = load_model_and_tokenizer(model)
    g = torch.Generator().manual_seed(0)
    seqs = []
    for i in range(32):
        if i % samples_per_prompt == 0:
            p = torch.randint(100, 40000, (60,), generator=g).tolist()
        c = torch.randint(100, 40000, (int(torch.randint(30, 97, (1,), generator=g)),), generator=g).tolist()
        seqs.append(Sequence(p, c, [-1.0] * len(c), [0.5] * len(c)))
    optim = OptimConfig(lr=1e-6, micro_batch_tokens=budget, share_prompts=share)
    trainer = Trainer(m, optim, AlgorithmConfig(), tok.pad_token_id, 0.7)
    tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in seqs)
    trainer.step(seqs)  # warm-up: allocations, AdamW state
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        computed = trainer.step(seqs)["computed_tokens"]
        times.append(time.perf_counter() - t0)
    seconds = min(times)
    params = sum(p.numel() for p in m.parameters())
    return {
        "budget": budget,
        "samples_per_prompt": samples_per_prompt,
        "share_prompts": share,
        "step_seconds": seconds,
        "tokens": tokens,
        "computed_tokens": computed,
        "tokens_per_second": tokens / seconds,
        "gflops": 6 * params * computed / seconds / 1e9,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(default_dir("smollm2-135m-instruct")))
    p.add_argument("--budgets", type=int, nargs="+", default=[16384, 4096, 2048, 1024, 512])
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one setting in this process
    p.add_argument("--per-prompt", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--share", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.model, args.one, args.per_prompt, args.share)))
        return
    peak_gflops = matmul_peak_gflops()

    def measure(budget: int, per_prompt: int = 1, share: bool = False) -> dict:
        cmd = [sys.executable, __file__, "--model", args.model, "--one", str(budget), "--per-prompt", str(per_prompt)]
        out = subprocess.run(cmd + ["--share"] * share, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        row["share_of_matmul_peak"] = row["gflops"] / peak_gflops
        print(
            f"budget {budget:>6}, {32 // per_prompt} prompts x {per_prompt}, share_prompts={share}: "
            f"{row['step_seconds']:.1f} s, {row['tokens_per_second']:.0f} tok/s, "
            f"{row['gflops']:.0f} GFLOP/s ({row['share_of_matmul_peak']:.0%} of peak), "
            f"peak RSS {row['peak_rss_gb']:.1f} GB",
            flush=True,
        )
        return row

    rows = [measure(budget) for budget in args.budgets]
    base = next(r for r in rows if r["budget"] == 16384) if 16384 in args.budgets else rows[0]
    best = max(rows, key=lambda r: r["tokens_per_second"])
    grouped = [measure(best["budget"], 8, share) for share in (False, True)]
    rows += grouped
    result = {
        "speedup": best["tokens_per_second"] / base["tokens_per_second"],
        "prompt_sharing_speedup": grouped[1]["tokens_per_second"] / grouped[0]["tokens_per_second"],
        "shared_tokens_per_second": grouped[1]["tokens_per_second"],
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
