"""The machine's own limit: fp32 matmul throughput with 1 and with all threads.

Run: .venv/bin/python bench/matmul_peak.py   (writes bench/results/matmul_peak.json)
Other benchmarks report their achieved FLOP/s as a fraction of these numbers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch


def gflops(threads: int, n: int = 2048, repeats: int = 20) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    cores = os.cpu_count() or 1
    result = {
        "gflops_all_threads": gflops(cores),
        "gflops_1_thread": gflops(1),
        "threads": cores,
        "torch": torch.__version__,
        "command": "python bench/matmul_peak.py",
    }
    out = Path(__file__).parent / "results" / "matmul_peak.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
