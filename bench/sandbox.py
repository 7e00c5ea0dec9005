"""The code sandbox (issue 16, item 2): the fuzz suite's attacks, and executions per second through the pool.

- Attacks: each program of relayrl/sandbox/attacks.py runs `--repeats` times; contained means reported with its
  expected status, nothing left running or on disk, the project file unread, no file written outside and no
  connection to a listener in this process. `sandbox_escapes` counts the runs that were not: it must be 0.
- Throughput: `--executions` trivial programs (`pass`) through a SandboxPool of each `--workers`, and the same
  number of bare `python -c pass` processes, one at a time, for the overhead of the isolation per execution.

    .venv/bin/python bench/sandbox.py [--repeats 3] [--executions 200] [--workers 1 2 4] [--out bench/results]

Writes `<out>/sandbox.json` and prints it. Timings want an idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import save

from relayrl.sandbox import SandboxConfig, SandboxPool, run
from relayrl.sandbox.attacks import attacks, layers, leftovers, listener
from relayrl.sandbox.isolation import landlock_abi

ATTACK_LIMITS = SandboxConfig(timeout=2.0, cpu_seconds=1, memory_mb=256, max_processes=8, output_bytes=4096)


def attack_rows(repeats: int, escape: Path) -> dict[str, dict]:
    rows = {}
    with listener() as server:
        suite = attacks(Path("pyproject.toml").resolve(), escape, server.getsockname()[1])
        for name, attack in suite.items():
            results = [run(attack.source, config=ATTACK_LIMITS) for _ in range(repeats)]
            contained = [attack.contained(r, escape, server) for r in results]
            rows[name] = {
                "expected": attack.expected,
                "statuses": sorted({r.status for r in results}),
                "contained": sum(contained),
                "seconds": statistics.median(r.seconds for r in results),
            }
            escape.unlink(missing_ok=True)
    return rows


def pool_rate(workers: int, executions: int) -> dict[str, float]:
    with SandboxPool(SandboxConfig(workers=workers)) as pool:
        pool.map(["pass"] * workers)  # warm: page cache, thread start
        start = time.perf_counter()
        results = pool.map(["pass"] * executions)
        seconds = time.perf_counter() - start
    assert all(r.ok for r in results), [r for r in results if not r.ok][:1]
    latency = statistics.median(r.seconds for r in results)
    return {"executions_per_second": executions / seconds, "median_latency_ms": 1000 * latency}


def bare_ms(executions: int) -> float:
    python = getattr(sys, "_base_executable", sys.executable)
    times = []
    for _ in range(executions):
        start = time.perf_counter()
        subprocess.run([python, "-E", "-s", "-B", "-c", "pass"], check=True)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--executions", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--note", default="")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    if args.repeats < 1 or args.executions < 4:
        parser.error("--repeats must be >= 1 and --executions >= 4")

    missing = run("pass").missing
    rows = attack_rows(args.repeats, Path("tests/sandbox-escape.txt").resolve())
    tried = args.repeats * len(rows)
    contained = sum(row["contained"] for row in rows.values())
    pools = {str(w): pool_rate(w, args.executions) for w in args.workers}
    bare = bare_ms(args.executions // 4)
    serial = pools[str(args.workers[0])]["median_latency_ms"]
    workers = SandboxConfig().workers if SandboxConfig().workers in args.workers else args.workers[-1]
    result = {
        "sandbox_escapes": tried - contained,
        "attacks_tried": tried,
        "attacks_contained": contained,
        "executions_per_second": pools[str(workers)]["executions_per_second"],
        "pool_workers": workers,
        "overhead_ms_per_execution": serial - bare,
        "bare_python_ms": bare,
        "pools": pools,
        "attacks": rows,
        "leftovers_after": leftovers(),
        "missing_layers": sorted(layers(missing)),
        "missing": list(missing),
        "machine": {
            "cores": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "landlock_abi": landlock_abi(),
            "uid": os.geteuid(),
        },
        "note": args.note,
    }
    save(result, args.out, "sandbox")


if __name__ == "__main__":
    main()
