"""Resume that always finishes: finished runs, records lost to a kill, checkpoints replaced mid-kill, failed starts."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from relayrl.config import load_config
from relayrl.controller import train
from relayrl.models import TinySize, load_model_and_tokenizer
from relayrl.state import Counters, RunState
from relayrl.tracking import WALL_CLOCK, read_jsonl
from relayrl.training import checkpoint


def _untimed(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields, which no two runs share."""
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in read_jsonl(run_dir / "metrics.jsonl")]


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory) -> Path:
    """One finished sync run; tests that kill or damage a run work on a copy."""
    root = tmp_path_factory.mktemp("finished")
    return train(load_config(None, tiny(root / "runs", mode="sync", steps=6)), show_progress=False)


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


def test_a_finished_run_resumes_to_a_no_op_and_rewrites_a_lost_report(finished, tmp_path, capsys):
    run_dir = _copy(finished, tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = _untimed(run_dir)
    weights = (run_dir / "checkpoints" / "step_000006" / "model.safetensors").read_bytes()
    assert train(resume=run_dir, show_progress=False) == run_dir
    assert "the run is finished" in capsys.readouterr().out
    # killed after its last checkpoint, before the summary and its last metrics line
    (run_dir / "summary.json").unlink()
    (run_dir / "report.md").unlink()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    train(resume=run_dir, show_progress=False)
    again = json.loads((run_dir / "summary.json").read_text())
    for key in ("heldout_accuracy_start", "heldout_accuracy_end", "steps", "rollouts_trained", "heldout_interval_end"):
        assert again[key] == summary[key]
    assert _untimed(run_dir) == metrics and (run_dir / "report.md").exists()
    assert (run_dir / "checkpoints" / "step_000006" / "model.safetensors").read_bytes() == weights


def killed_after_step_4_resumes_to_the_same_run(finished: Path, tmp_path: Path, logged: int) -> Path:
    """A copy of `finished` (6 steps) as if killed right after checkpoint step_000004 was written, with `logged`
    metrics lines, resumed: it ends with the same metrics and final weights."""
    killed = _copy(finished, tmp_path)
    (killed / "checkpoints" / "latest").write_text("step_000004")
    shutil.rmtree(killed / "checkpoints" / "step_000006")
    records = read_jsonl(killed / "metrics.jsonl")
    (killed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:logged]))
    (killed / "summary.json").unlink()
    train(resume=killed, show_progress=False)
    assert _untimed(killed) == _untimed(finished)
    final = "checkpoints/step_000006/model.safetensors"
    assert (killed / final).read_bytes() == (finished / final).read_bytes()
    return killed


def test_records_between_a_checkpoint_and_its_metrics_line_are_replayed(finished, tmp_path):
    killed = killed_after_step_4_resumes_to_the_same_run(finished, tmp_path, logged=3)  # the step-4 line was lost
    assert [r["step"] for r in read_jsonl(killed / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def _tiny_model():
    return load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=0)


def test_resaving_a_checkpoint_keeps_one_copy_whenever_it_is_killed(tmp_path, monkeypatch):
    model, tok = _tiny_model()
    state = RunState("rl", step=4, counters=Counters(trained_tokens=7))
    checkpoint.save(tmp_path, "step_000004", model, tok, state, {"step": torch.tensor(1.0)}, keep=2)
    replace = os.replace

    def killed_at_the_rename(src, dst):  # the old copy moved aside, then the kill before the new one lands
        if str(src).endswith(".tmp") and Path(dst).name == "step_000004":
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed_at_the_rename)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, "step_000004", model, tok, RunState("rl", step=4), None, keep=2)
    found = checkpoint.latest(tmp_path)
    assert found == tmp_path / "step_000004.old"
    loaded, optimizer = checkpoint.load(found)
    assert loaded.counters.trained_tokens == 7 and torch.equal(optimizer["step"], torch.tensor(1.0))


def test_checkpoints_hold_no_pickle_and_no_non_finite_weight(tmp_path):
    model, tok = _tiny_model()
    path = checkpoint.save(tmp_path, "sft", model, tok, RunState("rl"), None, keep=2)
    torch.load(path / checkpoint.TENSORS, weights_only=True)  # tensors and plain containers only
    json.loads((path / checkpoint.STATE).read_text())
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(checkpoint.NonFiniteWeights, match="not saved"):
        checkpoint.save(tmp_path, "step_000001", model, tok, RunState("rl"), None, keep=2)
    assert checkpoint.latest(tmp_path) == path


def test_a_failed_start_leaves_no_run_folder(tiny, tmp_path, monkeypatch):
    def unreadable(*_args, **_kwargs):  # a failure past validation, e.g. a model folder that cannot be read
        raise OSError("model.safetensors: truncated")

    monkeypatch.setattr("relayrl.run.load_model_and_tokenizer", unreadable)
    with pytest.raises(OSError, match="truncated"):
        train(load_config(None, tiny(tmp_path / "runs")), show_progress=False)
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(finished, tmp_path):
    early = tmp_path / "run"
    early.mkdir()
    shutil.copy(finished / "config.yaml", early / "config.yaml")  # all a run killed during SFT leaves
    train(resume=early, show_progress=False)
    assert _untimed(early) == _untimed(finished)


def test_a_latest_pointer_to_nothing_loadable_is_an_error_not_a_fresh_start(tmp_path):
    model, tok = _tiny_model()
    checkpoint.save(tmp_path, "sft", model, tok, RunState("rl"), None, keep=2)
    (tmp_path / "latest").write_text("step_000004")
    with pytest.raises(checkpoint.CheckpointError, match="missing or incomplete"):
        checkpoint.latest(tmp_path)
    (tmp_path / "step_000004").mkdir()
    torch.save({"phase": "rl"}, tmp_path / "step_000004" / checkpoint.TENSORS)  # the older, pickled format
    with pytest.raises(checkpoint.CheckpointError, match="older relayrl"):
        checkpoint.latest(tmp_path)


def test_steps_of_a_cut_off_timeline_never_outlive_the_checkpoint_just_written(tmp_path):
    model, tok = _tiny_model()
    for name in ("step_000002", "step_000004", "step_000006"):
        checkpoint.save(tmp_path, name, model, tok, RunState("rl"), None, keep=1)
    # a kill after step_000008 was renamed into place but before `latest` named it; the resumed run, from
    # step_000006, is stopped at step 7
    (tmp_path / "step_000008").mkdir()
    checkpoint.save(tmp_path, "step_000007", model, tok, RunState("rl", step=7), None, keep=1)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000007"]
    assert checkpoint.latest(tmp_path) == tmp_path / "step_000007"


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    from relayrl.tracking import restore

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    restore(path, 2, [])
    assert read_jsonl(path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]
