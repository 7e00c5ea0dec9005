"""Benchmark: relayrl async vs relayrl sync vs TRL 1.16 GRPOTrainer, same settings, same machine.

What it measures, for each system, on the same tiny model, task, prompts per step, samples per
prompt, max completion tokens, temperature, learning rate and number of RL steps:

* trained tokens per second: prompt + completion tokens (unpadded, completion including its EOS)
  of every rollout trained on, divided by the RL wall time;
* RL wall time: relayrl's own `rl_seconds` (the RL loop, which includes its periodic held-out
  evaluations and checkpoints; the supervised warm start is excluded), and for TRL only
  `trainer.train()`;
* greedy held-out accuracy before and after RL, with `relayrl.evaluation.evaluate.evaluate`;
* final mean train reward (last step), and the mean over all steps;
* peak RSS: the sampled peak of the summed RSS of the system's whole process tree (relayrl async
  = trainer + generator + reward workers), plus kernel high-water marks (getrusage).

Every system runs in its own child process (this script re-invoked with `--child`), one after
the other, never concurrently. relayrl async runs first; its supervised warm-start checkpoint
(`<run>/checkpoints/sft`) is the starting model TRL trains from. relayrl sync repeats the same
(seeded, deterministic) warm start.

TRL is configured so one optimizer step consumes exactly one generation batch of
prompts_per_step x samples_per_prompt completions, on-policy (see `grpo_kwargs`). Threads: relayrl
uses its own budget (async splits the cores between generator and trainer, sync gives all cores
to each); TRL gets relayrl sync's budget (all cores). Timings are only meaningful on an otherwise
idle machine.

Run (YAML config files and dotted overrides, as for `relayrl train`, applied to all three systems):

    .venv/bin/python bench/trl_vs_relayrl.py [config.yaml ...] [key=value ...] [--out bench/results]

Writes `<out>/<label>.json` (default `trl_vs_relayrl`; top-level `throughput_ratio` = relayrl async
tokens/s / TRL tokens/s) and, unless `--no-sync`, `<out>/async_vs_sync.json` (top-level `async_speedup` = relayrl async
tokens/s / relayrl sync tokens/s), child logs under `<out>/logs/<label>/`, relayrl run folders under
`<out>/runs/` (or `--run-dir`), and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # optional: without it peak RSS falls back to getrusage high-water marks
    psutil = None

SCRIPT = Path(__file__).resolve()
RESERVED = ("mode", "run_dir", "name")  # set by the benchmark per system
MB = 1024.0  # ru_maxrss is in KiB on Linux

# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def rusage_mb() -> dict[str, float]:
    """Kernel high-water marks: this process, and the largest waited-for descendant."""
    return {
        "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MB,
        "peak_rss_largest_descendant_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / MB,
    }


def config(args: list[str], extra: tuple[str, ...] = ()):
    """The relayrl config of the benchmark's positional arguments: YAML files, then dotted overrides."""
    from relayrl.config import load_config, split_args

    _, configs, overrides = split_args(args)
    return load_config(configs, [*overrides, *extra])


def override_keys(overrides: list[str]) -> set[str]:
    return {o.split("=", 1)[0].strip() for o in overrides}


def effective_overrides(user: list[str], steps: int) -> list[str]:
    """User overrides minus the reserved keys, plus benchmark defaults the user did not set.

    eval_every/checkpoint_every default to `steps`, so relayrl's timed loop holds only the one
    final evaluation and checkpoint it always does (TRL's timed train() holds neither).
    """
    kept = [o for o in user if o.split("=", 1)[0].strip() not in RESERVED]
    keys = override_keys(kept)
    defaults = [f"{k}={steps}" for k in ("eval_every", "checkpoint_every") if k not in keys]
    return kept + defaults


# ---------------------------------------------------------------------------------------------
# Child: relayrl
# ---------------------------------------------------------------------------------------------


def child_relayrl(overrides: list[str], result: Path) -> None:
    from relayrl.controller import train

    run_dir = train(config(overrides), show_progress=False)
    write_json(result, {"run_dir": str(run_dir), **rusage_mb()})


# ---------------------------------------------------------------------------------------------
# Child: TRL
# ---------------------------------------------------------------------------------------------

_REWARD_STATE: dict[str, Any] = {"tokens": 0, "rollouts": 0, "calls": 0, "threads": []}


def task_reward(
    prompts: list[str], completions: list[str], completion_ids: list[list[int]], answer: list[str], **_: Any
) -> list[float]:
    """TRL reward function: the task's scorer. Also counts the tokens of every rollout TRL trains on."""
    import torch

    from relayrl.generation.sampler import encode_prompt

    state = _REWARD_STATE
    tokenizer, scorer = state["tokenizer"], state["scorer"]
    state["tokens"] += sum(len(encode_prompt(tokenizer, p)) for p in prompts) + sum(len(c) for c in completion_ids)
    state["rollouts"] += len(completions)
    state["calls"] += 1
    state["threads"].append(torch.get_num_threads())
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]  # chat: the assistant message
    return [float(scorer(t, a)) for t, a in zip(texts, answer, strict=True)]


def build_dataset(task, steps: int, prompts_per_step: int):
    """Items 0..steps*P-1 in order: TRL's batch b holds the same prompts as relayrl's batch b."""
    from datasets import Dataset

    items = [task.train_item(i) for i in range(steps * prompts_per_step)]
    prompts = [it.prompt if isinstance(it.prompt, str) else list(it.prompt) for it in items]  # chat: TRL's format
    return Dataset.from_dict({"prompt": prompts, "answer": [it.answer for it in items]})


def grpo_kwargs(cfg, output_dir: Path) -> dict[str, Any]:
    """GRPOConfig arguments matching relayrl's settings.

    Batch semantics (TRL 1.16, one process): per_device_train_batch_size counts completions, not
    prompts; generation_batch_size = per_device_train_batch_size x steps_per_generation, and a
    Trainer step (= max_steps unit) is gradient_accumulation_steps micro-batches. With
    per_device_train_batch_size = P*G, steps_per_generation = gradient_accumulation_steps =
    num_iterations = 1, each optimizer step generates P prompts x G samples and trains on all of
    them in one backward pass, on-policy (TRL then skips the old-logprob pass).

    Loss: relayrl's AIPO (-min(pi/mu, rho) A log pi, token mean over the batch) is TRL's "cispo"
    with epsilon_high = rho, normalised by the active tokens of the whole generation batch; for
    relayrl's ppo the token-mean counterpart is "dapo". On-policy, cispo/dapo/bnpo all give the
    gradient -sum(A grad log pi) / n_completion_tokens here.
    """
    r, o, a = cfg.rollout, cfg.optim, cfg.algorithm
    aipo = a.loss == "aipo"
    return {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "use_vllm": False,
        "bf16": False,  # GRPOConfig defaults to bf16; relayrl trains in fp32
        "activation_checkpointing": False,  # TRL defaults gradient_checkpointing (its alias) to True; relayrl doesn't
        "per_device_train_batch_size": r.prompts_per_step * r.samples_per_prompt,
        "gradient_accumulation_steps": 1,
        "steps_per_generation": 1,
        "num_iterations": 1,
        "num_generations": r.samples_per_prompt,
        "max_completion_length": r.max_new_tokens,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "top_k": 0,
        "shuffle_dataset": False,
        "learning_rate": o.lr,
        "lr_scheduler_type": "constant_with_warmup",  # as relayrl: linear warm-up, then constant
        "warmup_steps": o.warmup_steps,
        "optim": "adamw_torch",
        "adam_beta1": o.betas[0],
        "adam_beta2": o.betas[1],
        "weight_decay": o.weight_decay,
        "max_grad_norm": o.grad_clip,
        "beta": 0.0,
        "loss_type": "cispo" if aipo else "dapo",
        "epsilon": a.clip_eps,
        "epsilon_high": a.rho if aipo else a.clip_eps,
        "scale_rewards": "group" if a.advantage == "grpo" else "none",
        "max_steps": cfg.steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": cfg.seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def child_trl(overrides: list[str], sft_dir: Path, output_dir: Path, result: Path) -> None:
    import dataclasses

    import torch
    from trl import GRPOConfig, GRPOTrainer

    from relayrl import build
    from relayrl.evaluation.evaluate import evaluate
    from relayrl.models import load_model_and_tokenizer

    cfg = config(overrides, ("mode=sync",))
    threads = build.thread_budget(cfg)[1]  # relayrl sync's budget: all cores (threads.trainer if set)
    torch.set_num_threads(threads)
    task = build.task(cfg)
    model, tokenizer = load_model_and_tokenizer(str(sft_dir))
    sampling = build.sampling(cfg, task.stop_strings)
    start = evaluate(model, tokenizer, task.heldout(), task.scorer, sampling).accuracy

    _REWARD_STATE.update(tokenizer=tokenizer, scorer=task.scorer)
    kwargs = grpo_kwargs(cfg, output_dir)
    args = GRPOConfig(**kwargs)
    batch = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    assert args.generation_batch_size == batch and args.steps_per_generation == 1, "one generation batch per step"
    assert not (args.bf16 or args.gradient_checkpointing), "fp32, no activation checkpointing, as relayrl"
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=task_reward,
        args=args,
        train_dataset=build_dataset(task, cfg.steps, cfg.rollout.prompts_per_step),
        processing_class=tokenizer,
    )
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0

    end = evaluate(trainer.model, tokenizer, task.heldout(), task.scorer, sampling).accuracy
    logs = [h for h in trainer.state.log_history if "reward" in h]
    write_json(
        result,
        {
            "wall_seconds": wall,
            "steps": trainer.state.global_step,
            "trained_tokens_counted": _REWARD_STATE["tokens"],
            "trained_tokens_trl_num_tokens": logs[-1].get("num_tokens") if logs else None,
            "rollouts_trained": _REWARD_STATE["rollouts"],
            "reward_calls": _REWARD_STATE["calls"],
            "torch_threads": sorted(set(_REWARD_STATE["threads"])),
            "heldout_accuracy_start": start,
            "heldout_accuracy_end": end,
            "rewards": [h["reward"] for h in logs],
            "grpo_config": kwargs | {"generation_batch_size": args.generation_batch_size},
            "stop_strings_ignored": list(task.stop_strings),  # TRL generation does not use relayrl stop strings
            "sampling": dataclasses.asdict(sampling),
            "log_history": trainer.state.log_history,
            **rusage_mb(),
        },
    )


# ---------------------------------------------------------------------------------------------
# Parent: run the children, measure, compare
# ---------------------------------------------------------------------------------------------


def run_child(label: str, child_args: list[str], logs: Path) -> tuple[dict, float | None]:
    """Run this script as a child; return its result JSON and the peak summed RSS (MB) of its tree."""
    result, log = logs / f"{label}.result.json", logs / f"{label}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(SCRIPT), *child_args, "--result", str(result)]
    print(f"running {label} (log: {log})", flush=True)
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=os.getcwd())
        peak = watch_tree_rss(proc)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        sys.exit(f"{label} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    return json.loads(result.read_text()), peak


def watch_tree_rss(proc: subprocess.Popen, interval: float = 0.1) -> float | None:
    """Wait for proc, sampling the summed RSS of it and all its descendants; the peak in MB."""
    if psutil is None:
        proc.wait()
        return None
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        total = 0
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            members = []
        for p in members:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        peak = max(peak, total)
        time.sleep(interval)
    return peak / 2**20


def relayrl_block(child: dict, tree_peak: float | None) -> dict:
    run_dir = Path(child["run_dir"])
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    tokens = int(sum(r["trained_tokens"] for r in records))
    loop_seconds = sum(r["trained_tokens"] / r["tokens_per_second"] for r in records if r["tokens_per_second"] > 0)
    rewards = [r["reward"] for r in records if "reward" in r]
    return {
        "trained_tokens_per_second": summary["trained_tokens_per_second"],
        "wall_seconds": summary["rl_seconds"],
        "trained_tokens": tokens,
        "trained_tokens_per_second_excluding_eval_checkpoint": tokens / loop_seconds if loop_seconds else None,
        "steps": summary["steps"],
        "rollouts_trained": summary["rollouts_trained"],
        "dropped_stale": summary["dropped_stale"],
        "heldout_accuracy_start": summary["heldout_accuracy_start"],
        "heldout_accuracy_end": summary["heldout_accuracy_end"],
        "final_train_reward": summary["final_reward"],
        "mean_train_reward": sum(rewards) / len(rewards) if rewards else None,
        "peak_rss_mb": tree_peak if tree_peak is not None else child["peak_rss_main_mb"],
        "peak_rss_main_mb": child["peak_rss_main_mb"],
        "peak_rss_largest_descendant_mb": child["peak_rss_largest_descendant_mb"],
        "sft_seconds": summary["sft_seconds"],
        "run_dir": str(run_dir),
    }


def trl_block(child: dict, tree_peak: float | None) -> dict:
    tokens = child["trained_tokens_counted"]
    rewards = child["rewards"]
    return {
        "trained_tokens_per_second": tokens / child["wall_seconds"],
        "wall_seconds": child["wall_seconds"],
        "trained_tokens": tokens,
        "trained_tokens_trl_num_tokens": child["trained_tokens_trl_num_tokens"],
        "trl_num_tokens_matches_count": child["trained_tokens_trl_num_tokens"] == tokens,
        "tokens_counted_as": "sum over every trained rollout of len(prompt ids) + len(completion ids incl. EOS), "
        "counted in the reward function; cross-checked against TRL's logged num_tokens",
        "steps": child["steps"],
        "rollouts_trained": child["rollouts_trained"],
        "heldout_accuracy_start": child["heldout_accuracy_start"],
        "heldout_accuracy_end": child["heldout_accuracy_end"],
        "final_train_reward": rewards[-1] if rewards else None,
        "mean_train_reward": sum(rewards) / len(rewards) if rewards else None,
        "peak_rss_mb": tree_peak if tree_peak is not None else child["peak_rss_main_mb"],
        "peak_rss_main_mb": child["peak_rss_main_mb"],
        "peak_rss_largest_descendant_mb": child["peak_rss_largest_descendant_mb"],
        "torch_threads": child["torch_threads"],
        "grpo_config": child["grpo_config"],
        "stop_strings_ignored": child["stop_strings_ignored"],
    }


def settings_block(cfg) -> dict:
    from relayrl import build

    r = cfg.rollout
    return {
        "model": cfg.model.name_or_path,
        "model_size": {"hidden": cfg.model.hidden, "layers": cfg.model.layers, "heads": cfg.model.heads},
        "task": build.task(cfg).name,
        "steps": cfg.steps,
        "prompts_per_step": r.prompts_per_step,
        "samples_per_prompt": r.samples_per_prompt,
        "max_new_tokens": r.max_new_tokens,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "lr": cfg.optim.lr,
        "seed": cfg.seed,
        "algorithm": {"advantage": cfg.algorithm.advantage, "loss": cfg.algorithm.loss, "rho": cfg.algorithm.rho},
        "cpu_count": os.cpu_count(),
    }


def markdown_table(blocks: dict[str, dict]) -> str:
    rows = [
        "| system | trained tok/s | RL wall s | trained tokens | held-out start -> end | final reward | peak RSS MB |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for name, b in blocks.items():
        reward = "n/a" if b["final_train_reward"] is None else f"{b['final_train_reward']:.3f}"
        rss = "n/a" if b["peak_rss_mb"] is None else f"{b['peak_rss_mb']:.0f}"
        rows.append(
            f"| {name} | {b['trained_tokens_per_second']:.0f} | {b['wall_seconds']:.1f} | {b['trained_tokens']} "
            f"| {b['heldout_accuracy_start']:.1%} -> {b['heldout_accuracy_end']:.1%} | {reward} | {rss} |"
        )
    return "\n".join(rows)


def run_benchmark(user_overrides: list[str], out: Path, run_root: Path, label: str, with_sync: bool) -> None:
    base = config([o for o in user_overrides if o.split("=", 1)[0].strip() not in RESERVED])
    overrides = effective_overrides(user_overrides, base.steps)
    cfg = config(overrides)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    common = [*overrides, f"run_dir={run_root}"]
    logs = out / "logs" / label

    systems: dict[str, dict] = {}
    for mode in ("async", "sync") if with_sync else ("async",):
        child, peak = run_child(
            f"relayrl_{mode}", ["--child", "relayrl", *common, f"mode={mode}", f"name=bench-{mode}-{stamp}"], logs
        )
        systems[f"relayrl_{mode}"] = relayrl_block(child, peak)
    sft = Path(systems["relayrl_async"]["run_dir"]) / "checkpoints" / "sft"
    trl_out = run_root / f"{stamp}-bench-trl"
    child, peak = run_child("trl_grpo", ["--child", "trl", "--sft", str(sft), "--trl-out", str(trl_out), *common], logs)
    systems["trl_grpo"] = trl_block(child, peak)
    systems["trl_grpo"]["start_model"] = str(sft)

    meta = {
        "command": shlex.join(sys.orig_argv),
        "user_overrides": user_overrides,
        "effective_overrides": overrides,
        "settings": settings_block(cfg),
        "timestamp": stamp,
    }
    async_tps = systems["relayrl_async"]["trained_tokens_per_second"]
    ratio = async_tps / systems["trl_grpo"]["trained_tokens_per_second"]
    write_json(
        out / f"{label}.json",
        {
            "throughput_ratio": ratio,
            "throughput_ratio_definition": "relayrl async trained tokens/s / TRL GRPOTrainer trained tokens/s",
            **meta,
            "relayrl_async": systems["relayrl_async"],
            "trl_grpo": systems["trl_grpo"],
        },
    )
    print()
    print(markdown_table(systems))
    print()
    print(f"throughput_ratio (relayrl async / TRL): {ratio:.2f}; results: {out / f'{label}.json'}")
    if with_sync:
        speedup = async_tps / systems["relayrl_sync"]["trained_tokens_per_second"]
        write_json(
            out / "async_vs_sync.json",
            {
                "async_speedup": speedup,
                "async_speedup_definition": "relayrl async trained tokens/s / relayrl sync trained tokens/s",
                **meta,
                "relayrl_async": systems["relayrl_async"],
                "relayrl_sync": systems["relayrl_sync"],
            },
        )
        print(f"async_speedup (relayrl async / sync): {speedup:.2f}; results: {out / 'async_vs_sync.json'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="relayrl YAML configs and dotted overrides, e.g. steps=50")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="where the result JSON files go")
    p.add_argument("--run-dir", type=Path, default=None, help="relayrl/TRL run folders (default: <out>/runs)")
    p.add_argument("--label", default="trl_vs_relayrl", help="the result file's name: <out>/<label>.json")
    p.add_argument("--no-sync", action="store_true", help="skip relayrl sync (and async_vs_sync.json)")
    p.add_argument("--child", choices=("relayrl", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--sft", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--trl-out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child == "relayrl":
        child_relayrl(args.overrides, args.result)
    elif args.child == "trl":
        child_trl(args.overrides, args.sft, args.trl_out, args.result)
    else:
        out = args.out.resolve()
        run_benchmark(args.overrides, out, (args.run_dir or out / "runs").resolve(), args.label, not args.no_sync)


if __name__ == "__main__":
    main()
