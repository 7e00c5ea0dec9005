"""This CPU as a plan device: one core is one device, its figures measured by microbenchmarks on one thread.

Matmul FLOP/s come from bench/results/matmul_peak.json when it exists (measured with the machine alone), else
from a short matmul here. Bandwidth is what a matrix-vector product reads a second (how decode reads weights).
The fixed costs of a decode step come from relayrl's own sampler on models too small to compute anything:
two depths split the per-layer cost from the per-step one, two batch sizes give the per-row one. Measured on
a busy machine these numbers are too slow; bench/placement.py measures them alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from relayrl.plan.inputs import Device, ModelShape

MATMUL_PEAK = Path(__file__).resolve().parents[2] / "bench" / "results" / "matmul_peak.json"
CPU_TRAIN_EFFICIENCY = 0.6  # measured 6ND share of the matmul peak: 49% (tiny-llama), 76% (SmolLM2-135M)


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


def training_efficiency(m: ModelShape, rows: int, length: int, peak: float) -> float:
    """Share of `peak` (one thread) that forward and backward of this model's decoder layers reach on `rows`
    sequences of `length` tokens, counting 6 x layer params x tokens: narrow models run far below the
    2048-wide matmul peak (docs/benchmarks.md: 49% for tiny-llama's whole step, 76% for SmolLM2-135M's)."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        vocab_size=16,
        hidden_size=m.hidden,
        intermediate_size=m.intermediate or 4 * m.hidden,
        num_hidden_layers=2,
        num_attention_heads=m.heads,
        num_key_value_heads=m.kv_heads,
        head_dim=m.head_dim,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = LlamaModel(config)
        x = torch.randn(rows, length, m.hidden, requires_grad=True)
        seconds = _best(lambda: model(inputs_embeds=x).last_hidden_state.sum().backward(), 3)
    finally:
        torch.set_num_threads(threads)
    layer_params = sum(p.numel() for p in model.layers.parameters())
    return min(1.0, 6 * layer_params * rows * length / seconds / peak)


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
