"""Sampler speed on a real-size model: relayrl's sampler against Hugging Face `generate`, side by side.

Both sample the same random 60-token prompts to the full `--new-tokens` (no EOS, temperature 0.7, no top-k
or top-p), fp32 on 2 threads, at each batch size, best of two after a warm-up, alternating the two so that
any drift of the machine hits both. Reports generated tokens/s, the achieved GFLOP/s (2 x parameters x
tokens, attention left out) as a share of the machine's matmul peak (bench/results/matmul_peak.json).

    .venv/bin/python bench/sampler_speed.py [--model DIR] [--batches 1 8 32 64] [--new-tokens 96]

Writes bench/results/sampler_speed.json (top-level `speedup_at_32`: relayrl tokens/s over HF's at batch 32).
"""

from __future__ import annotations

import argparse
import resource
import time
from functools import partial

import torch
from common import matmul_peak_gflops, save, side_by_side

from relayrl.generation.sampler import SamplingConfig, sample
from relayrl.model_import import default_dir
from relayrl.models import load_model_and_tokenizer


def prompts(batch: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(batch)
    return [torch.randint(100, 40000, (60,), generator=g).tolist() for _ in range(batch)]


def relayrl_seconds(model, batch: int, new_tokens: int, pad_id: int) -> float:
    cfg = SamplingConfig(max_new_tokens=new_tokens, temperature=0.7)
    t0 = time.perf_counter()
    out = sample(model, prompts(batch), cfg, eos_id=-1, pad_id=pad_id, generator=torch.Generator().manual_seed(0))
    assert all(len(s.completion_ids) == new_tokens for s in out)
    return time.perf_counter() - t0


def hf_seconds(model, batch: int, new_tokens: int, pad_id: int) -> float:
    ids = torch.tensor(prompts(batch))
    t0 = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=True,
        temperature=0.7,
        top_k=0,
        top_p=1.0,
        pad_token_id=pad_id,
    )
    assert out.shape[1] == ids.shape[1] + new_tokens
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(default_dir("smollm2-135m-instruct")))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    torch.set_num_threads(2)
    model, tok = load_model_and_tokenizer(args.model)
    model.eval()
    params = sum(q.numel() for q in model.parameters())
    peak = matmul_peak_gflops()
    systems = {"relayrl": relayrl_seconds, "hf_generate": hf_seconds}
    for run in systems.values():  # warm-up
        run(model, 4, 8, tok.pad_token_id)
    rows = []
    for batch in args.batches:
        runs = {name: partial(run, model, batch, args.new_tokens, tok.pad_token_id) for name, run in systems.items()}
        row = {"batch": batch} | side_by_side(runs, batch * args.new_tokens, params, peak)
        row["speedup"] = row["relayrl"]["tokens_per_second"] / row["hf_generate"]["tokens_per_second"]
        rows.append(row)
        print(
            f"batch {batch:>3}: relayrl {row['relayrl']['tokens_per_second']:6.1f} tok/s "
            f"({row['relayrl']['share_of_matmul_peak']:.0%} of peak), HF generate "
            f"{row['hf_generate']['tokens_per_second']:6.1f} tok/s: {row['speedup']:.2f}x",
            flush=True,
        )
    at_32 = next((r["speedup"] for r in rows if r["batch"] == 32), rows[-1]["speedup"])
    result = {
        "speedup_at_32": at_32,
        "matmul_peak_gflops": peak,
        "new_tokens": args.new_tokens,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "model": args.model,
        "rows": rows,
    }
    save(result, args.out, "sampler_speed")


if __name__ == "__main__":
    main()
