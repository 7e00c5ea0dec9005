"""The controller: generate, score, train, publish weights — in one loop.

Sync mode keeps one batch in flight: it is generated with the weights just published.
Async mode keeps `max_staleness + 1` in flight: the generator (its own process) samples
batch k+1 with version k-1... while the trainer learns from batch k. Requests and weight
versions are queued in order, so which version samples which batch is fixed by the config,
not by timing, and the run is reproducible; AIPO corrects the lag.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import deque
from pathlib import Path

from relayrl import build, phases
from relayrl.adapters import trained_parameters
from relayrl.algorithms.sequences import Sequence, to_sequences
from relayrl.algorithms.shaping import Overlong, informative_groups
from relayrl.config import Config
from relayrl.errors import nonfinite_streak
from relayrl.evaluation import report
from relayrl.evaluation.metrics import spoc_metrics
from relayrl.recipes import spoc
from relayrl.rewards.judge import pair_samples
from relayrl.rollout import Rollout, message_wise, replies
from relayrl.run import Run, new_run_dir, open_run, remove_unstarted
from relayrl.tracking import Tracker, read_jsonl, restore


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
    try:
        run = Run(cfg, run_dir, resume is not None)
        if run.state and run.state.final and (run_dir / "summary.json").exists():
            print(f"the run is finished ({run.state.step} steps); its report: {run_dir}/report.md")
            return run_dir
        stop = StopFlag()
        try:
            prepare = spoc.prepare if cfg.recipe == "spoc" else phases.prepare
            prepare(run, stop, show_progress)  # the SFT warm start and the recipe's phases, if still to do
            if run.state.step < cfg.steps and not stop.requested:
                _loop(cfg, run, stop, show_progress)
        finally:
            stop.restore()
    except BaseException:
        if resume is None:
            remove_unstarted(run_dir)
        raise
    if run.state.final is None:
        print(f"stopped at step {run.state.step}; continue with: relayrl train --resume {run_dir}")
        return run_dir
    restore(run_dir / "metrics.jsonl", run.state.step, run.state.records)  # records a kill may have cost
    records = read_jsonl(run_dir / "metrics.jsonl")
    report.write(run_dir, records, phases.summary(run, records))
    start, end = run.state.start.accuracy, run.state.final.accuracy
    print(f"held-out accuracy {start:.1%} -> {end:.1%}; report: {run_dir}/report.md")
    return run_dir


def message_metrics(rollouts: list[Rollout]) -> dict[str, float | None]:
    """SPOC's metrics of rollouts rewarded message by message (nothing for others), as `train_*`."""
    if not message_wise(rollouts):
        return {}
    return {f"train_{k}": v for k, v in spoc_metrics([r.message_rewards() for r in rollouts]).items()}


def episode_metrics(rollouts: list[Rollout]) -> dict[str, float]:
    """Multi-turn episodes' tool use and limits: replies per episode, and the shares cut by a token or turn limit."""
    n = len(rollouts)
    return {
        "tool_calls": sum(replies(r.messages) for r in rollouts) / n,
        "cut_by_tokens": sum(r.finish_reason == "length" for r in rollouts) / n,
        "cut_by_turns": sum(r.finish_reason == "turns" for r in rollouts) / n,
    }


def _loop(cfg: Config, run: Run, stop: StopFlag, show_progress: bool) -> None:
    with contextlib.ExitStack() as opened:  # whatever was started is closed, however the loop ends
        trainer = opened.enter_context(contextlib.closing(build.trainer(run)))
        generator = opened.enter_context(contextlib.closing(build.generator(run)))
        scorer = opened.enter_context(contextlib.closing(build.scorer(run)))
        tracker = opened.enter_context(
            contextlib.closing(Tracker(run.dir, run.state.step, cfg.steps, run.state.records, show_progress))
        )
        _steps(cfg, run, stop, trainer, generator, scorer, tracker)


def training_sequences(run: Run, batch: list[Rollout], step: int) -> list[Sequence]:
    """The scored rollouts as the trainer takes them at `step`: advantages by the algorithm, overlong shaping."""
    a, cfg = run.cfg.algorithm, run.cfg
    overlong = Overlong(run.sampling.max_new_tokens, a.overlong_buffer, a.overlong_penalty, a.overlong_filter)
    return to_sequences(batch, a.advantage, cfg.spoc.verify_baseline, a.drop_zero_advantage, overlong, step)


def _steps(cfg: Config, run: Run, stop: StopFlag, trainer, generator, scorer, tracker: Tracker) -> None:
    state, counters, a = run.state, run.state.counters, cfg.algorithm
    depth = cfg.max_staleness + 1 if cfg.mode == "async" else 1
    pending = deque(state.pending)  # generated before a checkpoint, not yet trained on

    def consumed() -> int:
        """Batches taken from the generator so far: one a step, and those dynamic sampling drew besides."""
        return state.step + counters.extra_batches

    next_batch = consumed() + len(pending)
    records: list[dict] = []  # since the last checkpoint, which will hold them

    def submit_up_to(limit: int) -> None:
        nonlocal next_batch
        while next_batch < min(limit, cfg.steps + counters.extra_batches):
            generator.submit(run.request(next_batch))
            next_batch += 1

    def scored() -> tuple[list[Rollout], float, float, dict[str, float]]:
        """The next batch's rollouts within max_staleness of the trainer (the rest dropped and counted), the seconds
        its generation took and those spent waiting for it, and its reward statistics (with the seconds scoring
        took: the trainer waits for them)."""
        t = time.perf_counter()
        rollouts, seconds = pending.popleft() if pending else generator.collect()
        waited = time.perf_counter() - t
        fresh = [r for r in rollouts if state.step - r.version <= cfg.max_staleness]
        counters.dropped_stale += len(rollouts) - len(fresh)
        if cfg.reward.pairs_samples:
            pair_samples(fresh)  # a pairwise judge compares each sample with another of its prompt
        t = time.perf_counter()
        stats = scorer.score(fresh)
        return fresh, seconds, waited, stats | {"score_seconds": time.perf_counter() - t}

    def checkpoint() -> None:
        nonlocal saved, records
        while next_batch - consumed() - len(pending) > 0:  # drain what is in flight into the checkpoint
            pending.append(generator.collect())
        trainer.copy_to(run.model)
        state.pending, state.records = list(pending), records
        run.save(f"step_{state.step:06d}", trainer.state_dict())
        saved, records = state.step, []

    saved = state.step
    weight_bytes = sum(p.numel() * p.element_size() for p in trained_parameters(run.model))  # LoRA: the adapters
    generator.publish(trainer.weights(), state.step)
    submit_up_to(consumed() + depth)
    while state.step < cfg.steps and not stop.requested:
        t0 = time.perf_counter()
        fresh, gen_seconds, waited, reward_stats = scored()
        batch, drawn = fresh, {}
        if a.dynamic_sampling:  # DAPO: draw on until enough groups tell right from wrong, at most a cap of batches
            kept, draws = informative_groups(fresh, cfg.rollout.samples_per_prompt), 1
            while len(kept) < cfg.rollout.prompts_per_step and draws < a.dynamic_max_batches:
                counters.extra_batches += 1
                submit_up_to(consumed() + depth)  # the pipeline stays `depth` batches ahead of what is taken
                more, seconds, wait, stats = scored()
                fresh, gen_seconds, waited, draws = fresh + more, gen_seconds + seconds, waited + wait, draws + 1
                reward_stats = {k: v + stats.get(k, 0.0) for k, v in reward_stats.items()}
                kept += informative_groups(more, cfg.rollout.samples_per_prompt)
            # surplus groups are left out; none within the cap: every group (advantage 0: only a KL term moves it)
            batch = [r for g in kept[: cfg.rollout.prompts_per_step] for r in g] or fresh
            drawn = {"sampled_batches": draws, "informative_groups": len(kept)}
        seqs = training_sequences(run, batch, state.step)
        metrics = trainer.step(seqs)
        skipped = bool(metrics["skipped_nonfinite"])
        limit = cfg.optim.max_nonfinite_steps
        state.nonfinite_in_a_row = nonfinite_streak(skipped, state.nonfinite_in_a_row, limit, f"step {state.step + 1}")
        # left out: incomplete groups (stale rollouts dropped), zero advantages (drop_zero_advantage), uninformative
        # or surplus groups (dynamic_sampling), truncated rollouts (overlong_filter), a skipped step
        metrics["untrained_rollouts"] = len(fresh) - (0 if skipped else len(seqs))
        state.step += 1
        t2 = time.perf_counter()
        counters.reward_failures += int(reward_stats["reward_timeouts"] + reward_stats["reward_errors"])
        counters.nonfinite_steps += skipped
        if not skipped:
            counters.trained_tokens += int(metrics["trained_tokens"])
            counters.rollouts_trained += len(seqs)
        metrics |= reward_stats | drawn
        metrics |= {  # reward and length of every rollout drawn; staleness of those trained on
            "reward": sum(r.reward for r in fresh) / len(fresh),
            "completion_length": sum(len(r.completion_ids) for r in fresh) / len(fresh),
            "staleness": sum(state.step - 1 - r.version for r in batch) / len(batch),
            "dropped_stale": counters.dropped_stale,
            "rollouts_trained": counters.rollouts_trained,
            "nonfinite_steps": counters.nonfinite_steps,
            "gen_seconds": gen_seconds,
            "wait_seconds": waited,
            "train_seconds": t2 - t0 - waited,
            "tokens_per_second": metrics["trained_tokens"] / (t2 - t0),
            "gen_share": gen_seconds / (gen_seconds + t2 - t0 - waited),
        }
        metrics |= message_metrics(fresh) | (episode_metrics(fresh) if cfg.environment.name else {})
        metrics |= generator.stats()  # Ray: reissued prompts, tokens/s per replica
        if cfg.executors == "ray" and fresh:
            metrics[f"replica{fresh[0].replica}_staleness"] = metrics["staleness"]  # a batch has one replica
        t3 = time.perf_counter()
        generator.publish(trainer.weights(), state.step)
        sync = time.perf_counter() - t3
        metrics |= {"sync_seconds": sync, "sync_bytes": weight_bytes, "sync_share": sync / (t2 - t0 + sync)}
        metrics["step_seconds"] = time.perf_counter() - t0  # asking for a batch to publishing the weights it made
        submit_up_to(consumed() + depth)
        if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
            trainer.copy_to(run.model)
            score, heldout_metrics = phases.heldout(run)
            metrics |= heldout_metrics
            if state.step == cfg.steps:
                state.final = score
        counters.rl_seconds += time.perf_counter() - t0
        record = {"step": state.step, **metrics}
        records.append(record)
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps or stop.requested:
            checkpoint()  # before the record is logged: a kill in between loses nothing (it is replayed)
        tracker.log(record)
    if stop.requested and saved != state.step:  # Ctrl-C came after this step's checkpoint decision
        checkpoint()
