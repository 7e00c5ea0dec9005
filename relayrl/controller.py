"""The controller: generate, score, train, publish weights — in one loop.

Sync mode keeps one batch in flight: it is generated with the weights just published.
Async mode keeps `max_staleness + 1` in flight: the generator (its own process) samples
batch k+1 with version k-1... while the trainer learns from batch k. Requests and weight
versions are queued in order, so which version samples which batch is fixed by the config,
not by timing, and the run is reproducible; AIPO corrects the lag.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from pathlib import Path

from relayrl.config import Config
from relayrl.evaluation import report
from relayrl.rewards.judge import pair_samples
from relayrl.run import Run, message_metrics, new_run_dir, open_run, to_sequences
from relayrl.tracking import Tracker, read_jsonl


class StopFlag:
    """First Ctrl-C: finish the step, checkpoint, exit. Second: stop at once."""

    def __init__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, *_):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nStopping after this step (Ctrl-C again to stop at once)...")

    def restore(self):
        signal.signal(signal.SIGINT, self.previous)


def train(cfg: Config | None = None, resume: Path | None = None, show_progress: bool = True) -> Path:
    run_dir = resume or new_run_dir(cfg)
    cfg = open_run(run_dir) if resume else cfg
    print(f"relayrl run folder: {run_dir}")
    run, stop = Run(cfg, run_dir, resume is not None), StopFlag()
    try:
        run.prepare(stop, show_progress)  # SFT warm start and the recipe's phases (SPOC: PairSFT), if still to do
        _loop(cfg, run, stop, show_progress)
    finally:
        stop.restore()
    if run.state["step"] == cfg.steps:
        final = run.last_eval
        records = read_jsonl(run_dir / "metrics.jsonl")
        report.write(run_dir, records, run.log_summary(records, final))
        print(
            f"held-out accuracy {run.state['heldout_start']:.1%} -> {final.accuracy:.1%}; report: {run_dir}/report.md"
        )
    else:
        print(f"stopped at step {run.state['step']}; continue with: relayrl train --resume {run_dir}")
    return run_dir


def _loop(cfg: Config, run: Run, stop: StopFlag, show_progress: bool) -> None:
    trainer, generator, scorer = run.trainer(), run.generator(), run.scorer()
    step, counters = run.state["step"], run.state["counters"]
    depth = cfg.max_staleness + 1 if cfg.mode == "async" else 1
    pending = deque(run.state["pending"])  # generated before a checkpoint, not yet trained on
    next_batch = step + len(pending)
    tracker = Tracker(run.dir, step, cfg.steps, show_progress)

    def submit_up_to(limit: int) -> None:
        nonlocal next_batch
        while next_batch < min(limit, cfg.steps):
            generator.submit(run.request(next_batch))
            next_batch += 1

    def checkpoint() -> None:
        nonlocal saved
        while next_batch - step - len(pending) > 0:  # drain what is in flight into the checkpoint
            pending.append(generator.collect())
        trainer.copy_to(run.model)
        run.save(
            f"step_{step:06d}", step=step, pending=list(pending), optimizer=trainer.state_dict(), counters=counters
        )
        saved = step

    saved = step
    weight_bytes = sum(p.numel() * p.element_size() for p in run.model.parameters())
    generator.publish(trainer.weights(), step)
    submit_up_to(step + depth)
    try:
        while step < cfg.steps and not stop.requested:
            t0 = time.perf_counter()
            rollouts, gen_seconds = pending.popleft() if pending else generator.collect()
            t1 = time.perf_counter()
            fresh = [r for r in rollouts if step - r.version <= cfg.max_staleness]
            if cfg.reward.pairs_samples:
                pair_samples(fresh)  # a pairwise judge compares each sample with another of its prompt
            reward_stats = scorer.score(fresh)
            a = cfg.algorithm
            seqs = to_sequences(fresh, a.advantage, cfg.spoc.verify_baseline, a.drop_zero_advantage)
            metrics = trainer.step(seqs)
            if a.drop_zero_advantage:  # with incomplete groups (stale rollouts dropped) also left out
                metrics["untrained_rollouts"] = len(fresh) - len(seqs)
            step += 1
            t2 = time.perf_counter()
            counters["dropped_stale"] += len(rollouts) - len(fresh)
            counters["reward_failures"] += int(reward_stats["reward_timeouts"] + reward_stats["reward_errors"])
            counters["trained_tokens"] += int(metrics["trained_tokens"])
            counters["rollouts_trained"] += len(fresh)
            metrics |= reward_stats | {
                "reward": sum(r.reward for r in fresh) / len(fresh),
                "completion_length": sum(len(r.completion_ids) for r in fresh) / len(fresh),
                "staleness": sum(step - 1 - r.version for r in fresh) / len(fresh),
                "dropped_stale": counters["dropped_stale"],
                "rollouts_trained": counters["rollouts_trained"],
                "gen_seconds": gen_seconds,
                "wait_seconds": t1 - t0,
                "train_seconds": t2 - t1,
                "tokens_per_second": metrics["trained_tokens"] / (t2 - t0),
                "gen_share": gen_seconds / (gen_seconds + t2 - t1),
            }
            metrics |= message_metrics(fresh)  # SPOC's, of the rollouts trained on
            metrics |= generator.stats()  # Ray: reissued prompts, tokens/s per replica
            if cfg.executors == "ray" and fresh:
                metrics[f"replica{fresh[0].replica}_staleness"] = metrics["staleness"]  # a batch has one replica
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop.requested:
                checkpoint()
            t3 = time.perf_counter()
            generator.publish(trainer.weights(), step)
            sync = time.perf_counter() - t3
            metrics |= {"sync_seconds": sync, "sync_bytes": weight_bytes, "sync_share": sync / (t2 - t0 + sync)}
            submit_up_to(step + depth)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                trainer.copy_to(run.model)
                metrics |= run.heldout_metrics()
            counters["rl_seconds"] += time.perf_counter() - t0
            tracker.log(step, metrics)
        if stop.requested and saved != step:  # Ctrl-C came after this step's checkpoint decision
            checkpoint()
    finally:
        tracker.close()
        generator.close()
        scorer.close()
        trainer.close()
