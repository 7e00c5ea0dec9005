"""This CPU as a plan device: one core is one device, its figures measured by microbenchmarks on one thread.

Matmul FLOP/s come from bench/results/matmul_peak.json when it exists (measured with the machine alone), else
from a short matmul here. Bandwidth is what a matrix-vector product reads a second (how decode reads weights).
The fixed costs of a decode step come from relayrl's own sampler on models too small to compute anything:
two depths split the per-layer cost from the per-step one, two batch sizes give the per-row one. Measured on
a busy machine these numbers are too slow; bench/placement.py measures them alone.

`fitted` calibrates the device to one model and task from relayrl's own RL step (sampling, scoring, the trainer's
step, as the controller runs them), timed on one thread and on every core: each phase gets the efficiency of its
part that more cores shorten, and the cost of its part that they do not (the trainer's fixed cost a step; the
sampler's cost a row a decode step), so that the model's phase times on one device and on all of them equal the
measured ones. What stays a prediction is how the model composes the phases: the four placements, the weight
sync, the pipeline's overlap and the staleness.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from relayrl.plan.inputs import Device, ModelShape, Precision, Workload
from relayrl.plan.phases import generate_seconds, optimizer_seconds, response_lengths, train_flops

MATMUL_PEAK = Path(__file__).resolve().parents[2] / "bench" / "results" / "matmul_peak.json"
# 6ND share of the one-thread matmul peak that relayrl's trainer step reaches, fitted by bench/placement.py: 60%
# (tiny-llama), 70% (SmolLM2-135M), besides a fixed cost a step that `this_cpu` leaves at 0 (docs/planning.md)
CPU_TRAIN_EFFICIENCY = 0.6


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops() -> float:
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return 2 * 1024**3 / _best(lambda: a @ b, 10)


def gemv_bandwidth() -> float:
    import torch

    w, x = torch.randn(4096, 8192), torch.randn(8192)
    return w.numel() * w.element_size() / _best(lambda: w @ x, 10)


@dataclass(frozen=True)
class StepCosts:
    """Seconds of relayrl's own RL step on `threads` threads, and the shape of the batches it ran."""

    threads: int
    generate: float
    score: float
    train: float  # building the sequences and the trainer's step
    workload: Workload


def relayrl_workload(rollout, prompt_tokens: float, response_mean: float) -> Workload:
    """A relayrl run's batch as the model sees it: its rollout settings and the mean lengths it produced."""
    return Workload(
        rollout.prompts_per_step,
        rollout.samples_per_prompt,
        prompt_tokens,
        response_mean,
        rollout.max_new_tokens,
        share_prompts=True,  # relayrl's sampler always shares, its trainer by optim.share_prompts (on)
    )


def relayrl_step(cfg, threads: int, steps: int = 4) -> StepCosts:
    """relayrl's sync loop for 1 + `steps` steps on `threads` torch threads (the first a warm-up), each phase timed
    as the controller times it: the generator's batch, its scoring, the sequences and the trainer's step."""
    import torch

    from relayrl import build
    from relayrl.config import ThreadsConfig
    from relayrl.controller import training_sequences
    from relayrl.run import Run

    cfg = dataclasses.replace(cfg, mode="sync", executors="local", threads=ThreadsConfig(threads, threads))
    before = torch.get_num_threads()
    times, prompts, completions = [], [], []
    try:
        with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as opened:
            run = Run(cfg, Path(folder))
            trainer, generator, scorer = (
                opened.enter_context(contextlib.closing(make(run)))
                for make in (build.trainer, build.generator, build.scorer)
            )
            for step in range(steps + 1):
                generator.publish(trainer.weights(), step)
                generator.submit(run.request(step))
                rollouts, gen = generator.collect()
                start = time.perf_counter()
                scorer.score(rollouts)
                scored = time.perf_counter()
                trainer.step(training_sequences(run, rollouts, step))
                if step:
                    times.append((gen, scored - start, time.perf_counter() - scored))
                    prompts += [len(r.prompt_ids) for r in rollouts]
                    completions += [len(r.completion_ids) for r in rollouts]
    finally:
        torch.set_num_threads(before)
    workload = relayrl_workload(cfg.rollout, sum(prompts) / len(prompts), sum(completions) / len(completions))
    generate, score, train = (sum(t[i] for t in times) / len(times) for i in range(3))
    return StepCosts(threads, generate, score, train, workload)


def fitted(m: ModelShape, d: Device, p: Precision, one: StepCosts, many: StepCosts) -> Device:
    """`d` with the four figures that make the model's phase times equal `one` (one thread, one device) and
    `many` (every core as a device): the training efficiency and the trainer's fixed cost a step (two equations,
    training linear in 1 / efficiency); the generator's compute efficiency (prefill and compute-bound decode steps:
    what the second core shortens) and the sampler's cost a row a decode step (what it does not)."""

    def train_at(costs: StepCosts) -> tuple[float, float]:  # (FLOPs a device, seconds besides them)
        return train_flops(m, costs.workload) / costs.threads, costs.train - optimizer_seconds(m, d, p, costs.threads)

    (c1, t1), (cn, tn) = train_at(one), train_at(many)
    efficiency = min(1.0, (c1 - cn) / (d.flops * max(1e-9, t1 - tn)))
    overhead = max(0.0, t1 - c1 / (d.flops * efficiency))

    def forward(e: float, costs: StepCosts) -> float:
        device = dataclasses.replace(d, prefill_efficiency=e, row_overhead=0.0)
        return generate_seconds(m, device, p, costs.workload, costs.threads, costs.threads)

    lo, hi = 1e-3, 1.0  # the gain of n cores falls as the efficiency rises: bisect for the measured gain
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if forward(mid, one) - forward(mid, many) > one.generate - many.generate else (lo, mid)
    gen_efficiency = hi
    row_steps = sum(response_lengths(one.workload, one.workload.rows))
    row = max(0.0, one.generate - forward(gen_efficiency, one)) / row_steps
    return dataclasses.replace(
        d,
        train_efficiency=efficiency,
        train_overhead=overhead,
        prefill_efficiency=gen_efficiency,
        row_overhead=row,
    )


def decode_overheads(tokens: int = 16) -> tuple[float, float, float]:
    """(per forward, per layer, per row) seconds of one decode step of relayrl's sampler."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from relayrl.generation.sampler import SamplingConfig, sample

    def per_token(layers: int, rows: int) -> float:
        config = LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
        model = LlamaForCausalLM(config).eval()
        prompts = [[1, 2, 3, 4]] * rows
        cfg = SamplingConfig(max_new_tokens=tokens, temperature=1.0)
        with torch.no_grad():
            return _best(lambda: sample(model, prompts, cfg, eos_id=-1, pad_id=0), 3) / tokens

    shallow, deep, wide = per_token(2, 1), per_token(6, 1), per_token(2, 64)
    layer = max(0.0, (deep - shallow) / 4)
    return max(0.0, shallow - 2 * layer), layer, max(0.0, (wide - shallow) / 63)


def this_cpu() -> Device:
    """One core of this machine (torch on one thread), memory shared evenly between the cores."""
    import os

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if MATMUL_PEAK.exists():
            flops = json.loads(MATMUL_PEAK.read_text())["gflops_1_thread"] * 1e9
        else:
            flops = matmul_flops()
        bandwidth = gemv_bandwidth()
        step, layer, row = decode_overheads()
    finally:
        torch.set_num_threads(threads)
    cores = os.cpu_count() or 1
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / cores
    return Device(
        "cpu-core",
        flops=flops,
        bandwidth=bandwidth,
        memory=memory,
        link=bandwidth,  # weights to the generator process: a copy through shared memory
        train_efficiency=CPU_TRAIN_EFFICIENCY,
        prefill_efficiency=CPU_TRAIN_EFFICIENCY,
        bandwidth_efficiency=1.0,  # bandwidth is measured as decode reads it
        step_overhead=step,
        layer_overhead=layer,
        row_overhead=row,
    )
