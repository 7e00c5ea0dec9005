"""The phases of a run, one function each: supervised warm start, RL's starting point, held-out evaluation with
its audit, and the summary. The controller runs them around its loop; recipes (recipes/spoc.py) compose them."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import Callable

import torch
from rich.progress import track

from relayrl import adapters, build
from relayrl.algorithms.reward_losses import preference_probability
from relayrl.algorithms.sequences import Sequence
from relayrl.errors import nonfinite_streak
from relayrl.evaluation.evaluate import EvalResult, evaluate
from relayrl.generation.sampler import encode_prompt, prompt_text
from relayrl.models import TINY_ARCHS, resolve
from relayrl.rollout import ENVIRONMENT, POLICY
from relayrl.run import Run
from relayrl.state import HeldoutScore, RunState
from relayrl.tasks.base import Item
from relayrl.training.trainer import AlgorithmConfig, Trainer, collate


def prepare(run: Run, stop, show_progress: bool = True) -> None:
    """The phases before RL: the SFT warm start and RL's starting point, unless the checkpoint is past them
    (a recipe composes its own: recipes/spoc.py)."""
    if run.state is None:
        t0 = time.perf_counter()
        steps = warm_start(run, stop, show_progress)
        start_rl(run, time.perf_counter() - t0, steps)


def supervise(
    run: Run,
    batch: Callable[[int], list[Sequence]],
    steps: int,
    lr: float,
    description: str,
    stop,
    show_progress: bool,
    done: Callable[[int], bool] = lambda steps_taken: False,
) -> int:
    """At most `steps` supervised steps on `batch(step)`, on all cores (nothing else runs yet), until `done(steps
    taken)`; returns the steps taken."""
    torch.set_num_threads(min(run.gen_threads + run.train_threads, os.cpu_count() or 1))
    optim = dataclasses.replace(run.cfg.optim, lr=lr)
    trainer = Trainer(run.model, optim, AlgorithmConfig(), run.tokenizer.pad_token_id)  # supervised: no algorithm
    in_a_row = 0
    for step in track(range(steps), description=description, disable=not show_progress):
        if stop.requested:
            raise KeyboardInterrupt
        skipped = bool(trainer.step(batch(step), supervised=True)["skipped_nonfinite"])
        in_a_row = nonfinite_streak(skipped, in_a_row, optim.max_nonfinite_steps, f"{description} step {step + 1}")
        if done(step + 1):
            return step + 1
    return steps


# where the worked solutions held aside for `sft.target_match` are drawn: past any SFT (negative) or RL prompt index
HELD_ASIDE = 2**62


def warm_start(run: Run, stop, show_progress: bool = True) -> int:
    """Supervised steps on the task's worked solutions, until the model reproduces `sft.target_match` of those held
    aside (at most `sft.steps`); returns the steps taken."""
    s = run.cfg.sft

    def batch(step: int) -> list[Sequence]:
        # negative indices: a stream of its own, disjoint from the RL prompts (0, 1, 2, ...)
        indices = [-1 - step * s.batch_size - i for i in range(s.batch_size)]
        return [demonstration(run, run.task.train_item(i), i) for i in indices]

    aside = [
        demonstration(run, run.task.train_item(i), i)
        for i in range(HELD_ASIDE, HELD_ASIDE + (s.match_items if s.target_match and s.steps else 0))
    ]

    def done(steps: int) -> bool:
        if not aside or steps % s.match_every:
            return False
        share = reproduced(run.model, aside, run.tokenizer.pad_token_id)
        if share >= s.target_match:
            print(f"SFT warm start: {share:.0%} of {len(aside)} held-aside solutions reproduced at step {steps}")
        return share >= s.target_match

    return supervise(run, batch, s.steps, s.lr, "SFT warm start", stop, show_progress, done)


def reproduced(model, seqs: list[Sequence], pad_id: int, rows: int = 16) -> float:
    """The share of `seqs` whose every trained token is the model's most likely next token given the ones before
    (teacher-forced): the sequences greedy decoding writes out exactly. One forward pass, where sampling them
    would take one per token."""
    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(seqs), rows):  # a few rows at a time: a large vocabulary's logits are big
            b = collate(seqs[i : i + rows], pad_id, next(model.parameters()).device)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
            right = (logits.argmax(-1) == b["input_ids"][:, 1:]) | (b["mask"] == 0)
            hits += int(right.all(-1).sum())
    model.train()
    return hits / len(seqs)


def demonstration(run: Run, item: Item, index: int) -> Sequence:
    """A warm-start example: the environment's worked episode (its replies masked out of the loss), for a share
    `environment.demonstrations` of the items, or the task's solution; either ends with the end-of-sequence token."""
    tok, env = run.tokenizer, run.environment
    shown = env.demonstration(item) if env else None
    if shown is None or random.Random(f"demo-{run.cfg.seed}-{index}").random() >= run.cfg.environment.demonstrations:
        shown = [(POLICY, item.solution)]
    ids, mask = [], []
    for role, text in shown:
        part = (
            env.format.reply(tok, text, after_eos=False)
            if role == ENVIRONMENT
            else tok(text, add_special_tokens=False)["input_ids"]
        )
        ids += part
        mask += [float(role != ENVIRONMENT)] * len(part)
    return Sequence(encode_prompt(tok, item.prompt), [*ids, tok.eos_token_id], loss_mask=[*mask, 1.0])


def start_rl(run: Run, sft_seconds: float, sft_steps: int, pair_sft: dict | None = None) -> None:
    """The held-out accuracy RL starts from, and a fresh RL state saved as checkpoint `sft`. With LoRA, what the
    adapters learnt before RL is merged into the base RL's adapters train over (and are kept close to by the KL)."""
    m = run.cfg.model
    if m.lora.rank:
        base = None if m.name_or_path in TINY_ARCHS else resolve(m.name_or_path)
        run.model = adapters.rebase(run.model, run.tokenizer, m.lora, run.ckpt_root / "base", base)
    start, _ = heldout(run)
    run.state = RunState(phase="rl", sft_seconds=sft_seconds, sft_steps=sft_steps, start=start, pair_sft=pair_sft)
    run.save("sft")


def heldout(run: Run) -> tuple[HeldoutScore, dict]:
    """Greedy held-out accuracy of `run.model` (SPOC: of the answer it ends on, plus its self-correction metrics),
    with the gold-judge audit, as a score and as the metrics of a step's record."""
    scorer, messages = build.heldout_scorers(run.task, run.rewards)
    result = evaluate(
        run.model,
        run.tokenizer,
        run.heldout,
        scorer,
        run.sampling,
        message_scorer=messages,
        environment=run.environment,
    )
    score = HeldoutScore(result.accuracy, result.interval, result.message_metrics, audit(run, result))
    metrics = {"heldout_accuracy": result.accuracy} | {f"heldout_{k}": v for k, v in result.message_metrics.items()}
    return score, metrics | score.audit


def audit(run: Run, result: EvalResult) -> dict:
    """Gold-judge audit of a run rewarded by a reward model or judge: its reward of the held-out greedy
    completions beside their accuracy by the task's verifier (the gold), and the gap; reward hacking
    shows as a reward that rises while the gold does not. A reward model's logit goes through a sigmoid
    (as in `relayrl tts`) so that both are in [0, 1]."""
    cfg = run.cfg
    if cfg.reward.source == "task":
        return {}
    fn, scores, failures = build.reward_fn(cfg, run.task), [], 0
    for o in result.outputs:
        try:
            value = float(fn(o["greedy"], o["answer"], prompt=prompt_text(run.tokenizer, o["prompt"])))
        except Exception:  # a judge that fails is counted, never fatal
            value = math.nan
        if not math.isfinite(value):  # nor is a NaN: it would only hide the audit's mean
            failures += 1
            continue
        scores.append(preference_probability(value) if cfg.reward.source == "reward_model" else value)
    mean = sum(scores) / len(scores) if scores else None
    gap = None if mean is None else mean - result.accuracy
    return {"heldout_reward": mean, "heldout_gold_gap": gap, "heldout_reward_failures": failures}


def summary(run: Run, records: list[dict]) -> dict:
    """summary.json of a finished run."""
    s, c = run.state, run.state.counters
    return {
        "mode": run.cfg.mode,
        "recipe": run.cfg.recipe,
        "task": run.task.name,
        "model": run.cfg.model.name_or_path,
        "steps": s.step,
        "heldout_accuracy_start": s.start.accuracy,
        "heldout_interval_start": s.start.interval,
        "heldout_accuracy_end": s.final.accuracy,
        "heldout_interval_end": s.final.interval,
        "heldout_messages_start": s.start.messages,
        "heldout_messages_end": s.final.messages,
        "heldout_audit_start": s.start.audit,
        "heldout_size": len(run.heldout),
        "wall_seconds": s.wall_seconds,
        "rl_seconds": c.rl_seconds,
        "sft_seconds": s.sft_seconds,
        "sft_steps": s.sft_steps,
        "trained_tokens_per_second": c.trained_tokens / max(c.rl_seconds, 1e-9),
        "dropped_stale": c.dropped_stale,
        "rollouts_trained": c.rollouts_trained,
        "reward_failures": c.reward_failures,
        "nonfinite_steps": c.nonfinite_steps,
        "final_reward": records[-1].get("reward") if records else None,
        "pair_sft": s.pair_sft,
    }
