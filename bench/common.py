"""What the benchmarks share: the machine's matmul peak to compare with, how a result and a plot are saved."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path


def matmul_peak_gflops() -> float:
    """All-thread fp32 matmul GFLOP/s measured by bench/matmul_peak.py."""
    return json.loads(Path("bench/results/matmul_peak.json").read_text())["gflops_all_threads"]


def save(result: dict, out: str | Path, name: str) -> None:
    """Write `<out>/<name>.json` with the command that produced it, and print everything but its rows."""
    result["command"] = shlex.join([".venv/bin/python", sys.argv[0], *sys.argv[1:]])
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


def save_plot(fig, ax, path: Path, xlabel: str, ylabel: str) -> None:
    """Label, grid and legend `ax`, and write `fig` to `path` (its folder made)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
