"""What the benchmarks share: the machine's matmul peak to compare with, how a result and a plot are saved."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
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


def side_by_side(
    systems: dict[str, Callable[[], float]], tokens: int, params: int, peak: float, repeats: int = 2
) -> dict[str, dict[str, float]]:
    """Each system's seconds for the same `tokens` of generation, best of `repeats` with the systems alternating (so
    a drift of the machine hits all): tokens/s, the GFLOP/s that makes at 2 x `params` per token (attention left
    out), and its share of the matmul `peak`."""
    times: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(repeats):
        for name, run in systems.items():
            times[name].append(run())
    out = {}
    for name, seconds in times.items():
        tps = tokens / min(seconds)
        gflops = 2 * params * tps / 1e9
        out[name] = {"tokens_per_second": tps, "gflops": gflops, "share_of_matmul_peak": gflops / peak}
    return out


def gain(summary: dict) -> dict[str, float]:
    """A run's held-out accuracy before and after RL (summary.json), and the gain in points."""
    start, end = summary["heldout_accuracy_start"], summary["heldout_accuracy_end"]
    return {"start": start, "end": end, "gain_points": 100 * (end - start)}
