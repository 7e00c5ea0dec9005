"""Benchmark: the design's own placement on this machine, against the step-time model (issue 17, item 1).

Four settings per model, each in a child process of its own, one after another:

* colocated sync: `mode=sync`: the generator runs in the trainer's process, every core to each phase in turn;
* colocated async: `mode=async max_staleness=1`, relayrl's default threads (generator half the cores, trainer
  all): both processes share every core;
* disaggregated sync: `mode=async max_staleness=0` (a generator process that waits for each new version), the
  generator pinned to core 0 with one thread, the trainer (with the controller and reward workers) to core 1
  with one thread;
* disaggregated async: the same pinning, `max_staleness=1`.

Models: the embedded default (tiny-llama, arithmetic) and SmolLM2-135M-Instruct on reasoning-gym arithmetic
(examples/smollm2_basic_arithmetic.yaml; `relayrl models import smollm2-135m-instruct` first). Each model is
warm-started once and every setting starts from that SFT checkpoint (`sft.steps=0`), so all four train the
same model on the same prompts.

A step's time is the controller's own: `step_seconds` of metrics.jsonl (from asking for a batch to having
published the next weights), averaged after the first `--skip` steps (the pipeline filling) and without the last
(its held-out evaluation and checkpoint). Busy shares: `gen_seconds` and `train_seconds` over the step. The
controller scores each batch between trainer steps (`score_seconds`, part of `train_seconds`): the model gets
that time as `reward_seconds` with the scorer on the trainer's cores (`Placement.scorer_on_trainer`).

The CPU is then measured alone (relayrl.plan.calibrate: matmul peak, matrix-vector bandwidth, the sampler's
fixed costs), the device is fitted to relayrl's own step on one thread and on every core (`fitted`: each phase's
efficiency and the part more cores do not shorten), relayrl.plan predicts each setting's step time from the
measured batch shape, and the script
writes bench/results/placement.json (measured, predicted, errors) and bench/results/plan.json (the issue's
headline numbers, with the model's LlamaRL comparison).

Run alone on the machine (timings of a shared machine say nothing):

    .venv/bin/python bench/placement.py                  # both models; about 35 minutes
    .venv/bin/python bench/placement.py --models tiny    # the embedded default only; about 8 minutes
    .venv/bin/python bench/placement.py --smoke          # 3 steps, a 2-step warm start, to /tmp: checks the script
    .venv/bin/python bench/placement.py --predict-only   # the CPU measured again, the saved runs predicted again

Pinning is done here, not by relayrl: the child pins its own main thread to the trainer's core before torch
starts any thread (threads inherit it), and pins every thread of the generator process to the generator's
core as soon as the executor has started it (and every half second after, for threads it starts later).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import save

SCRIPT = Path(__file__).resolve()
GEN_CORE, TRAIN_CORE = 0, 1
MODELS = {
    "tiny": {"configs": [], "overrides": [], "steps": 40, "skip": 4},
    "smollm2": {
        "configs": ["relayrl/tasks/presets/rg_basic_arithmetic.yaml", "examples/smollm2_basic_arithmetic.yaml"],
        # held-out evaluation is not what is measured; half the recipe's prompts a step: a step on one core
        # trains for about a minute
        "overrides": ["task.reasoning_gym.heldout_size=20", "rollout.prompts_per_step=8"],
        "steps": 8,
        "skip": 2,
    },
}
SMOKE = {
    "tiny": ["sft.steps=2"],
    "smollm2": ["sft.steps=2", "rollout.prompts_per_step=1", "rollout.max_new_tokens=16"],
}
SETTINGS = {
    "colocated_sync": {"overrides": ["mode=sync"], "pin": False},
    "colocated_async": {"overrides": ["mode=async", "max_staleness=1"], "pin": False},
    "disaggregated_sync": {
        "overrides": ["mode=async", "max_staleness=0", "threads.generator=1", "threads.trainer=1"],
        "pin": True,
    },
    "disaggregated_async": {
        "overrides": ["mode=async", "max_staleness=1", "threads.generator=1", "threads.trainer=1"],
        "pin": True,
    },
}

# ---------------------------------------------------------------------------------------------
# Child: one relayrl run, pinned or not
# ---------------------------------------------------------------------------------------------


def pin_threads(pid: int, cores: set[int]) -> None:
    """Every thread of `pid` to `cores` (a process's affinity is per thread; new threads inherit their creator's)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, FileNotFoundError):
            continue


def keep_pinned(pid: int, cores: set[int]) -> None:
    while Path(f"/proc/{pid}").exists():
        try:
            pin_threads(pid, cores)
        except FileNotFoundError:
            return
        time.sleep(0.5)


def child(spec: dict) -> None:
    pinned: dict[str, list[int]] = {}
    if spec["pin"]:
        os.sched_setaffinity(0, {TRAIN_CORE})  # before torch exists: all of this process's threads inherit it
    from relayrl import build
    from relayrl.config import load_config
    from relayrl.controller import train

    if spec["pin"]:
        start_generator = build.generator

        def pinned_generator(run):
            generator = start_generator(run)
            pid = generator.proc.pid
            pin_threads(pid, {GEN_CORE})
            threading.Thread(target=keep_pinned, args=(pid, {GEN_CORE}), daemon=True).start()
            pinned["generator"] = sorted(os.sched_getaffinity(pid))
            return generator

        build.generator = pinned_generator  # the controller looks it up on the module when the loop starts
    run_dir = train(load_config(spec["configs"], spec["overrides"]), show_progress=False)
    pinned["trainer"] = sorted(os.sched_getaffinity(0))
    Path(spec["result"]).write_text(json.dumps({"run_dir": str(run_dir), "affinity": pinned}) + "\n")


def run_child(spec: dict, log: Path) -> dict:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--child", json.dumps(spec)], stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        sys.exit(f"child failed ({done.returncode}); its log: {log}")
    return json.loads(Path(spec["result"]).read_text())


# ---------------------------------------------------------------------------------------------
# Parent: warm start, the four settings, calibration, predictions
# ---------------------------------------------------------------------------------------------


def measured(run_dir: Path, skip: int) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = records[skip:-1] or records[:-1] or records  # a smoke run has too few steps for a steady state
    steps = [r["step_seconds"] for r in steady]

    def mean(key: str) -> float:
        return sum(r[key] for r in steady) / len(steady)

    step = sum(steps) / len(steps)
    return {
        "step_seconds": step,
        "gen_seconds": mean("gen_seconds"),
        "train_seconds": mean("train_seconds"),
        "sync_seconds": mean("sync_seconds"),
        "score_seconds": mean("score_seconds"),
        "generator_busy": mean("gen_seconds") / step,
        "trainer_busy": mean("train_seconds") / step,
        "staleness": mean("staleness"),
        "completion_length": mean("completion_length"),
        "trained_tokens": mean("trained_tokens"),
        "steps_measured": len(steady),
    }


def predict(cfg, runs: dict[str, dict], device) -> dict:
    """Each setting's step time by relayrl.plan, from the batch shape the runs measured and the device fitted to
    relayrl's own step on one thread and on every core; and, from the measured phases of the disaggregated sync
    run alone, the pipeline's prediction of disaggregated async."""
    from relayrl.plan.calibrate import fitted, relayrl_step, relayrl_workload
    from relayrl.plan.inputs import Placement, Precision
    from relayrl.plan.model_shapes import resolve
    from relayrl.plan.phases import PhaseTimes
    from relayrl.plan.pipeline import simulate
    from relayrl.plan.search import evaluate

    cores = os.cpu_count() or 1
    rows = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    completion = sum(r["completion_length"] for r in runs.values()) / len(runs)
    prompt = sum(r["trained_tokens"] for r in runs.values()) / len(runs) / rows - completion
    workload = relayrl_workload(cfg.rollout, max(1.0, prompt), completion)
    model = resolve(cfg.model.name_or_path)
    precision = Precision(gen_bytes=4, train_state_bytes=16, offload_bytes=0)  # fp32, one memory
    one, every = relayrl_step(cfg, 1), relayrl_step(cfg, cores)
    device = fitted(model, device, precision, one, every)
    placements = {  # relayrl's local executors: the controller scores on the trainer's cores
        "colocated_sync": Placement("colocated", cores, gen_tp=cores, mode="sync", scorer_on_trainer=True),
        "colocated_async": Placement("colocated", cores, gen_tp=cores, max_staleness=1, scorer_on_trainer=True),
        "disaggregated_sync": Placement("disaggregated", 1, 1, 1, mode="sync", scorer_on_trainer=True),
        "disaggregated_async": Placement("disaggregated", 1, 1, 1, max_staleness=1, scorer_on_trainer=True),
    }
    out = {
        "model": dataclasses.asdict(model),
        "workload": dataclasses.asdict(workload),
        "relayrl_step": [dataclasses.asdict(one), dataclasses.asdict(every)],  # what the device is fitted to
        "fitted": {
            k: getattr(device, k) for k in ("train_efficiency", "train_overhead", "prefill_efficiency", "row_overhead")
        },
        "settings": {},
    }
    for setting, place in placements.items():
        scoring = dataclasses.replace(workload, reward_seconds=runs[setting]["score_seconds"])
        option = evaluate(model, device, precision, scoring, place)
        got = runs[setting]["step_seconds"]
        out["settings"][setting] = {
            "predicted": {"step_seconds": option.schedule.step_seconds, **dataclasses.asdict(option.times)},
            "predicted_schedule": dataclasses.asdict(option.schedule),
            "measured": runs[setting],
            "relative_error": option.schedule.step_seconds / got - 1,
        }
    sync = runs["disaggregated_sync"]
    train = sync["train_seconds"] - sync["score_seconds"]
    phases = PhaseTimes(sync["gen_seconds"], train, sync["sync_seconds"], sync["score_seconds"])
    pipeline_only = simulate(phases, colocated=False, staleness_bound=1, scorer_on_trainer=True).step_seconds
    out["pipeline_only_disaggregated_async"] = {
        "predicted_step_seconds": pipeline_only,
        "relative_error": pipeline_only / runs["disaggregated_async"]["step_seconds"] - 1,
    }
    out["async_speedup_disaggregated"] = sync["step_seconds"] / runs["disaggregated_async"]["step_seconds"]
    out["async_speedup_colocated"] = runs["colocated_sync"]["step_seconds"] / runs["colocated_async"]["step_seconds"]
    return out


def paper_rows() -> dict:
    from relayrl.plan.paper import comparison

    return {
        r.size: {
            "gpus": r.gpus,
            "baseline_step_seconds": r.baseline.schedule.step_seconds,
            "colocated_offload_step_seconds": r.offload.schedule.step_seconds,
            "llamarl_like_step_seconds": r.llamarl.schedule.step_seconds,
            "llamarl_like": r.llamarl.label,
            "predicted_speedup": r.speedup,
            "paper_speedup": r.paper,
        }
        for r in comparison()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--smoke", action="store_true", help="3 steps, tiny warm starts, results to /tmp")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--run-dir", default="/tmp/placement_runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--predict-only",
        action="store_true",
        help="re-measure the CPU and re-predict the runs saved in OUT/placement.json (their warm starts must exist)",
    )
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.predict_only:
        return predict_saved(Path(args.out))
    if (os.cpu_count() or 1) < 2:
        sys.exit("placement: disaggregated settings need two cores")
    out = Path("/tmp/placement_smoke" if args.smoke else args.out)
    runs_root = Path(args.run_dir) / time.strftime("%Y%m%d-%H%M%S")
    results: dict = {"models": {}}
    for name in args.models:
        m = MODELS[name]
        steps, skip = (3, 1) if args.smoke else (m["steps"], m["skip"])
        base = m["overrides"] + (SMOKE[name] if args.smoke else []) + [f"run_dir={runs_root / name}"]
        print(f"{name}: warm start")
        warm = run_child(
            {
                "configs": m["configs"],
                "overrides": [*base, "steps=1", "mode=sync", "name=warm"],
                "pin": False,
                "result": str(runs_root / f"{name}_warm.json"),
            },
            out / "logs" / "placement" / f"{name}_warm.log",
        )
        sft = Path(warm["run_dir"]) / "checkpoints" / "sft"
        common = [
            *base,
            f"model.name_or_path={sft}",
            "sft.steps=0",
            f"steps={steps}",
            f"eval_every={steps}",
            f"checkpoint_every={steps}",
        ]
        runs, affinity = {}, {}
        for setting, s in SETTINGS.items():
            print(f"{name}: {setting}")
            spec = {
                "configs": m["configs"],
                "overrides": [*common, *s["overrides"], f"name={setting}"],
                "pin": s["pin"],
                "result": str(runs_root / f"{name}_{setting}.json"),
            }
            done = run_child(spec, out / "logs" / "placement" / f"{name}_{setting}.log")
            runs[setting], affinity[setting] = measured(Path(done["run_dir"]), skip), done["affinity"]
        results["models"][name] = {"overrides": common, "affinity": affinity, "runs": runs}
    write(results, out, smoke=args.smoke)


def predict_saved(out: Path) -> None:
    saved = json.loads((out / "placement.json").read_text())
    models = {
        name: {
            "overrides": r["overrides"],
            "affinity": r["affinity"],
            "runs": {s: v["measured"] for s, v in r["settings"].items()},
        }
        for name, r in saved["models"].items()
    }
    write({"models": models}, out, smoke=False)


def write(results: dict, out: Path, smoke: bool) -> None:
    """Measure this CPU, predict every model's settings from its measured runs, save placement.json and plan.json."""
    from relayrl.config import load_config
    from relayrl.plan.calibrate import this_cpu

    print("measuring this CPU")
    device = this_cpu()
    errors = {}
    for name, r in results["models"].items():
        r |= predict(load_config(MODELS[name]["configs"], [*r["overrides"], "mode=sync"]), r.pop("runs"), device)
        errors |= {f"{name}/{k}": v["relative_error"] for k, v in r["settings"].items()}
    results["device"] = dataclasses.asdict(device)
    results["calibration_max_error"] = max(abs(e) for e in errors.values())
    save(results, out, "placement")
    speedups = {n: r["async_speedup_disaggregated"] for n, r in results["models"].items()}
    paper = paper_rows()
    plan = {
        "async_speedup_disaggregated": speedups.get("tiny", next(iter(speedups.values()))),
        "async_speedup_disaggregated_by_model": speedups,
        "calibration_max_error": results["calibration_max_error"],
        "calibration_errors": errors,
        "predicted_speedups": {size: row["predicted_speedup"] for size, row in paper.items()},
        "paper_speedups": {size: row["paper_speedup"] for size, row in paper.items()},
        "paper_comparison": paper,
        "smoke": smoke,
    }
    save(plan, out, "plan")


if __name__ == "__main__":
    main()
