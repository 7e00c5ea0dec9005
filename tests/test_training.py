"""End to end: the controller's guarantees (determinism, exact resume, reload)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from relayrl import build
from relayrl.config import load_config
from relayrl.controller import train
from relayrl.evaluation.evaluate import evaluate
from relayrl.tracking import read_jsonl

COMPARED = [
    "reward",
    "loss",
    "grad_norm",
    "completion_length",
    "staleness",
    "heldout_accuracy",
    "trained_tokens",
    "rollouts_trained",
]


def _metrics(run_dir: Path) -> list[dict]:
    return [{k: r[k] for k in COMPARED if k in r} for r in read_jsonl(run_dir / "metrics.jsonl")]


def _run(tiny, tmp_path, name, **extra) -> Path:
    return train(load_config(None, tiny(tmp_path / name, **extra)), show_progress=False)


def test_async_at_staleness_zero_matches_sync(tiny, tmp_path):
    sync = _run(tiny, tmp_path, "sync", mode="sync")
    asyn = _run(tiny, tmp_path, "async", mode="async", max_staleness=0)
    assert _metrics(sync) == _metrics(asyn)
    assert len(_metrics(sync)) == 6
    assert all(m["staleness"] == 0 for m in _metrics(asyn))


def test_async_lags_by_one_version(tiny, tmp_path):
    run = _run(tiny, tmp_path, "a1", mode="async", max_staleness=1)
    stale = [m["staleness"] for m in _metrics(run)]
    assert stale == [0, 1, 1, 1, 1, 1]  # batch 1 was sampled by version 0 while step 0 trained


def _cli(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "relayrl.cli", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_after_checkpoint(proc: subprocess.Popen, run_root: Path, checkpoint: str) -> Path:
    deadline = time.time() + 240
    while time.time() < deadline:
        found = list(run_root.glob(f"*/checkpoints/{checkpoint}/trainer_state.pt"))
        if found:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return found[0].parents[2]
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _kill_and_resume(tiny, tmp_path, **extra) -> Path:
    root = tmp_path / "killed"
    proc = _cli(*tiny(root, steps=10, checkpoint_every=4, **extra))
    run_dir = _kill_after_checkpoint(proc, root, "step_000004")
    assert not (run_dir / "summary.json").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "relayrl.cli", "train", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return run_dir


def test_sigkilled_sync_run_resumes_to_the_same_metrics(tiny, tmp_path):
    killed = _kill_and_resume(tiny, tmp_path, mode="sync")
    whole = _run(tiny, tmp_path, "whole", mode="sync", steps=10, checkpoint_every=4)
    assert _metrics(killed) == _metrics(whole)
    assert [r["step"] for r in read_jsonl(killed / "metrics.jsonl")] == list(range(1, 11))


def test_sigkilled_async_run_loses_and_repeats_no_rollout(tiny, tmp_path):
    killed = _kill_and_resume(tiny, tmp_path, mode="async", max_staleness=2)
    whole = _run(tiny, tmp_path, "whole", mode="async", max_staleness=2, steps=10, checkpoint_every=4)
    assert _metrics(killed) == _metrics(whole)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["rollouts_trained"] == 10 * 4 * 4  # every batch exactly once
    assert summary["dropped_stale"] == 0


def test_ctrl_c_checkpoints_and_exits_cleanly(tiny, tmp_path):
    root = tmp_path / "interrupted"
    proc = _cli(*tiny(root, steps=200, checkpoint_every=100, mode="async"))
    deadline = time.time() + 240
    while not list(root.glob("*/metrics.jsonl")) or not read_jsonl(next(root.glob("*/metrics.jsonl"))):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    run_dir = next(root.iterdir())
    step = int((run_dir / "checkpoints" / "latest").read_text().removeprefix("step_"))
    assert 0 < step < 200
    assert "--resume" in out


def test_trained_checkpoint_reloads_with_transformers(tiny, tmp_path):
    run_dir = _run(tiny, tmp_path, "reload", mode="sync")
    ckpt = run_dir / "checkpoints" / "step_000006"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    cfg = load_config(str(run_dir / "config.yaml"))
    task = build.task(cfg)
    result = evaluate(model, tokenizer, task.heldout(), task.scorer, build.sampling(cfg, task.stop_strings))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result.accuracy == summary["heldout_accuracy_end"]
    assert {
        "heldout_accuracy_start",
        "heldout_accuracy_end",
        "steps",
        "wall_seconds",
        "trained_tokens_per_second",
        "mode",
    } <= summary.keys()
    assert (run_dir / "report.md").exists() and (run_dir / "report.png").stat().st_size > 0
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    # the `latest` pointer stands for the newest checkpoint wherever a model is named
    from relayrl.models import load_model_and_tokenizer

    newest = load_model_and_tokenizer(str(run_dir / "checkpoints" / "latest"))[0]
    assert all(torch.equal(a, b) for a, b in zip(newest.parameters(), model.parameters(), strict=True))


def test_eval_cli_compares_checkpoints(tiny, tmp_path, capsys):
    from relayrl.cli import main

    run_dir = _run(tiny, tmp_path, "evalcli", mode="sync", steps=2)
    out = tmp_path / "eval"
    overrides = [o for o in tiny(tmp_path) if o.startswith("task.")]
    ckpts = [str(run_dir / "checkpoints" / name) for name in ("sft", "step_000002")]
    main(["eval", *ckpts, *overrides, "--samples", "4", "--k", "1,4", "--output", str(out)])
    assert "| evalcli" not in capsys.readouterr().out  # labelled by run folder and checkpoint
    sft, last = json.loads((out / "eval.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sft["greedy_pass@1"]["value"] == summary["heldout_accuracy_start"]
    assert last["greedy_pass@1"]["value"] == summary["heldout_accuracy_end"]
    assert last["label"] == f"{run_dir.name}/step_000002"
    for row in (sft, last):
        assert 0 <= row["pass@1"]["value"] <= row["pass@4"]["value"] <= 1
        assert row["maj@4"]["ci95"][0] <= row["maj@4"]["value"] <= row["maj@4"]["ci95"][1]
    lines = read_jsonl(out / f"{run_dir.name}__step_000002.jsonl")
    assert len(lines) == 16 and all(len(r["samples"]) == len(r["samples_answer"]) == 4 for r in lines)
    assert (out / "compare.png").stat().st_size > 0 and "maj@4" in (out / "compare.md").read_text()
