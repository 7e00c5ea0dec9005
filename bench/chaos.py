"""Chaos: SIGKILL `relayrl train` at random moments in every phase, resume it, and compare with a run never killed.

Run: .venv/bin/python bench/chaos.py [--sync 20 --async 20 --ray 5 --seed 0]   (writes bench/results/chaos.json;
a mode given 0 keeps the rows it has there)

Each mode first runs once uninterrupted, recording when each phase begins (the run folder appears, checkpoint
`sft`, each step checkpoint, summary.json, exit). Each kill then targets one phase: start-up (before the run
folder), the SFT warm start, the RL steps, a checkpoint being written (the moment a `.tmp` folder appears) or the
end (after the last checkpoint). The killed run is resumed once with `relayrl train --resume` (a kill before the
folder exists leaves nothing to resume: the command is run again), and must then match the uninterrupted run:
metrics.jsonl record for record with the wall-clock fields left out (`relayrl.tracking.WALL_CLOCK`), the final
weights file byte for byte, and the summary's accuracies. Only the controller is killed, as a crash would;
processes it leaves behind (a generator process, a local Ray) are counted, then cleaned up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import save

from relayrl.tracking import WALL_CLOCK

# Ray: per-replica tokens/s (wall clock) and reissued prompts (a count of this session's reissues)
UNCOMPARED = ("_tokens_per_second", "reissued_prompts")
CONFIG = {  # about 20 s uninterrupted: a tiny model, SFT, then RL with a checkpoint every other step
    "model.hidden": 32,
    "model.layers": 2,
    "model.heads": 2,
    "sft.steps": 60,
    "sft.batch_size": 16,
    "steps": 10,
    "rollout.prompts_per_step": 4,
    "rollout.samples_per_prompt": 4,
    "rollout.max_new_tokens": 16,
    "eval_every": 5,
    "checkpoint_every": 2,
    "task.arithmetic.heldout_size": 32,
    "threads.generator": 1,
    "threads.trainer": 1,
}
MODES = {"sync": {"mode": "sync"}, "async": {"mode": "async", "max_staleness": 2}, "ray": {"executors": "ray"}}
PHASES = ("start-up", "sft", "rl", "checkpoint write", "end")


def _command(root: Path, mode: str) -> list[str]:
    overrides = CONFIG | MODES[mode] | {"run_dir": str(root)}
    return [sys.executable, "-m", "relayrl.cli", "train", *(f"{k}={v}" for k, v in overrides.items())]


def _launch(command: list[str]) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)


def _run_dir(root: Path) -> Path | None:
    found = [p for p in root.iterdir() if p.is_dir()] if root.exists() else []
    return found[0] if found else None


def _events(root: Path) -> set[str]:
    """What the run folder shows now: folder, sft, step_NNNNNN (complete checkpoints), tmp (one being written),
    summary."""
    run = _run_dir(root)
    if run is None:
        return set()
    seen = {"folder"}
    ckpts = run / "checkpoints"
    if ckpts.exists():
        for p in ckpts.iterdir():
            seen.add("tmp" if p.name.endswith((".tmp", ".old")) else p.name)
    if (run / "summary.json").exists():
        seen.add("summary")
    return seen


def timeline(mode: str, work: Path) -> tuple[Path, dict[str, float]]:
    """An uninterrupted run, and when (seconds from launch) each event first showed."""
    root = work / f"{mode}-reference"
    proc, start, times = _launch(_command(root, mode)), time.perf_counter(), {}
    while proc.poll() is None:
        for event in _events(root) - times.keys():
            times[event] = time.perf_counter() - start
        time.sleep(0.002)
    times["exit"] = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{mode} reference run failed: {proc.stderr.read().decode()[-2000:]}")
    _cleanup(proc)
    return _run_dir(root), times


def _plan(rng: random.Random, phase: str, times: dict[str, float]) -> dict:
    """When to kill: a random delay after an event of this run, drawn from the gap the reference run showed (timings
    move with the machine's load; the order of events does not)."""
    last = max(e for e in times if e.startswith("step_"))
    gaps = {
        "start-up": ("launch", 0.0, times["folder"]),
        "sft": ("folder", times["folder"], times["sft"]),
        "rl": ("sft", times["sft"], times[last]),
        "end": (last, times[last], times["exit"]),
    }
    if phase == "checkpoint write":
        n = sum(e.startswith("step_") for e in times) + 1  # sft's and each step's
        return {"phase": phase, "nth_tmp": rng.randint(1, n)}
    after, begin, end = gaps[phase]
    return {"phase": phase, "after": after, "delay": rng.uniform(0.0, end - begin)}


def _kill_at(command: list[str], root: Path, plan: dict) -> dict:
    """Launch, wait for the planned moment, SIGKILL the controller; what the folder showed then."""
    proc, start, tmp_seen, was_tmp, since = _launch(command), time.perf_counter(), 0, False, None
    while proc.poll() is None:
        now, events = time.perf_counter(), _events(root)
        if "nth_tmp" in plan:
            tmp_seen += "tmp" in events and not was_tmp
            was_tmp = "tmp" in events
            if tmp_seen >= plan["nth_tmp"]:
                break
        else:
            if since is None and (plan["after"] == "launch" or plan["after"] in events):
                since = now
            if since is not None and now - since >= plan["delay"]:
                break
        time.sleep(0.001)
    shown, at = sorted(_events(root)), time.perf_counter() - start
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(5)  # what the controller left running: does it go away by itself?
    left = _cleanup(proc)
    return {
        "killed": killed,
        "at_seconds": round(at, 3),
        "folder_showed": shown,
        "left_after_5s": left,
    }


def _cleanup(proc: subprocess.Popen) -> int:
    """Kill what the controller left in its session (a generator process, Ray's); how many there were."""
    out = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in out:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    return len(out)


def _untimed(run: Path) -> list[str]:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    kept = []
    for line in lines:
        record = {k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK and not k.endswith(UNCOMPARED)}
        kept.append(json.dumps(record, sort_keys=True))
    return kept


def _final_weights(run: Path) -> bytes:
    ckpts = run / "checkpoints"
    return (ckpts / (ckpts / "latest").read_text().strip() / "model.safetensors").read_bytes()


def compare(reference: Path, run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    expected = json.loads((reference / "summary.json").read_text())
    keys = ("heldout_accuracy_start", "heldout_accuracy_end", "steps", "rollouts_trained", "dropped_stale")
    return {
        "metrics_identical": _untimed(run) == _untimed(reference),
        "weights_identical": bool(summary) and _final_weights(run) == _final_weights(reference),
        "summary_identical": bool(summary) and all(summary.get(k) == expected[k] for k in keys),
    }


def chaos(mode: str, kills: int, rng: random.Random, work: Path) -> dict:
    reference, times = timeline(mode, work)
    print(
        f"{mode}: reference in {times['exit']:.1f} s; events {json.dumps({k: round(v, 2) for k, v in times.items()})}"
    )
    rows = []
    for i in range(kills):
        phase = PHASES[i % len(PHASES)]
        root = work / f"{mode}-{i:02d}"
        plan = _plan(rng, phase, times)
        row = {"mode": mode, **plan, **_kill_at(_command(root, mode), root, plan)}
        run = _run_dir(root)
        t0 = time.perf_counter()
        resumed = subprocess.run(
            [sys.executable, "-m", "relayrl.cli", "train", "--resume", str(run)] if run else _command(root, mode),
            capture_output=True,
            text=True,
            env=os.environ | {"OMP_NUM_THREADS": "1"},
            timeout=600,
        )
        row |= {
            "resumed_exit": resumed.returncode,
            "resume_seconds": time.perf_counter() - t0,
            "resumed": run is not None,
        }
        if resumed.returncode:
            row["resume_error"] = resumed.stderr[-1500:]
        row |= compare(reference, _run_dir(root))
        row["identical"] = row["metrics_identical"] and row["weights_identical"] and row["summary_identical"]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "resume_error"}))
        shutil.rmtree(root, ignore_errors=True)
    return {"reference_seconds": times["exit"], "events": times, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sync", type=int, default=20)
    parser.add_argument("--async", dest="asyn", type=int, default=20)
    parser.add_argument("--ray", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    # a mode given 0 kills keeps its rows from the last result (rerun one mode without the others' 40 minutes)
    earlier = Path(args.out) / "chaos.json"
    kept = json.loads(earlier.read_text())["modes"] if earlier.exists() else {}
    result: dict = {"config": CONFIG, "modes": kept}
    with tempfile.TemporaryDirectory(prefix="relayrl-chaos-") as tmp:
        for mode, n in (("sync", args.sync), ("async", args.asyn), ("ray", args.ray)):
            if n:
                result["modes"][mode] = chaos(mode, n, rng, Path(tmp)) | {"command": shlex.join(sys.argv)}
    rows = {m: r["rows"] for m, r in result["modes"].items()}
    result |= {
        "sync_identical": sum(r["identical"] for r in rows.get("sync", [])),
        "async_identical": sum(r["identical"] for r in rows.get("async", [])),
        # Ray: the same promise (docs/reliability.md), checked the same way
        "ray_ok": all(r["identical"] for r in rows.get("ray", [])) and bool(rows.get("ray")),
        "kills": sum(r["killed"] for rs in rows.values() for r in rs),
        "runs": sum(len(rs) for rs in rows.values()),
        "phases_killed": sorted({r["phase"] for rs in rows.values() for r in rs if r["killed"]}),
    }
    save(result, args.out, "chaos")


if __name__ == "__main__":
    main()
