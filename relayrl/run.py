"""What a training run is made of, built from its config, or from its folder to resume."""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import torch
from rich.progress import track

from relayrl.algorithms import advantages
from relayrl.algorithms.reward_losses import preference_probability
from relayrl.config import Config, load_config, to_yaml
from relayrl.evaluation.evaluate import EvalResult, evaluate
from relayrl.evaluation.metrics import spoc_metrics
from relayrl.executors.generator import GenerateRequest, LocalGenerator, ProcessGenerator
from relayrl.generation.sampler import encode_prompt
from relayrl.models import TinySize, load_model_and_tokenizer
from relayrl.recipes import spoc
from relayrl.rewards.spoc import SpocRewards
from relayrl.rewards.verifier import VerifierScorer
from relayrl.rollout import Rollout, message_wise
from relayrl.tasks.base import Scorer, Task
from relayrl.training import checkpoint
from relayrl.training.trainer import Sequence, Trainer


def new_run_dir(cfg: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(cfg.run_dir) / (f"{stamp}-{cfg.name}" if cfg.name else stamp)
    path.mkdir(parents=True, exist_ok=False)
    (path / "config.yaml").write_text(to_yaml(cfg))
    return path


def open_run(run_dir: Path) -> Config:
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"--resume: {run_dir} has no config.yaml; is it a relayrl run folder?")
    return load_config(str(run_dir / "config.yaml"))


def to_sequences(
    rollouts: list[Rollout], estimator: str, verify_baseline: str = "truth", drop_zero: bool = False
) -> list[Sequence]:
    """Rewards -> advantages, grouped by prompt; each token of a rollout carries its advantage.

    Rollouts rewarded message by message (SPOC) get message-wise RLOO advantages instead of `estimator`'s,
    each spread over its message's tokens (`verify_baseline`: see `advantages.message_rloo`). `drop_zero`: leave
    out the rollouts whose every token's advantage is 0 (`AlgorithmConfig.drop_zero_advantage`).
    """
    seqs = _advantages(rollouts, estimator, verify_baseline)
    return [s for s in seqs if any(s.advantages)] if drop_zero else seqs


def _advantages(rollouts: list[Rollout], estimator: str, verify_baseline: str) -> list[Sequence]:
    groups: dict[int, list[Rollout]] = {}
    for r in rollouts:
        groups.setdefault(r.prompt_index, []).append(r)
    width = max(len(g) for g in groups.values())
    complete = [g for g in groups.values() if len(g) == width]  # a group cut by dropped rollouts is not comparable
    if message_wise(rollouts):
        pools = [advantages.message_rloo([r.message_rewards() for r in g], 1e-6, verify_baseline) for g in complete]
        return [
            Sequence(r.prompt_ids, r.completion_ids, r.logprobs, _spread(r, adv))
            for g, group_advantages in zip(complete, pools, strict=True)
            for r, adv in zip(g, group_advantages, strict=True)
        ]
    rewards = torch.tensor([[r.reward for r in g] for g in complete], dtype=torch.float64)
    adv = advantages.compute(estimator, rewards)
    return [
        Sequence(r.prompt_ids, r.completion_ids, r.logprobs, [float(adv[i, j])] * len(r.completion_ids))
        for i, g in enumerate(complete)
        for j, r in enumerate(g)
    ]


def _spread(r: Rollout, message_advantages: list[float]) -> list[float]:
    per_token = [0.0] * len(r.completion_ids)
    for m, a in zip(r.messages, message_advantages, strict=True):
        per_token[m.start : m.end] = [a] * (m.end - m.start)
    return per_token


def heldout_scorers(
    task: Task, rewards: SpocRewards | None
) -> tuple[Scorer, Callable[[str, str], list[tuple[str, float]]] | None]:
    """What held-out accuracy scores, and what to report per message: SPOC's answer is the one it ends on."""
    return (rewards.final, rewards.messages) if rewards else (task.scorer, None)


def message_metrics(rollouts: list[Rollout]) -> dict[str, float | None]:
    """SPOC's metrics of rollouts rewarded message by message (nothing for others), as `train_*`."""
    if not message_wise(rollouts):
        return {}
    return {f"train_{k}": v for k, v in spoc_metrics([r.message_rewards() for r in rollouts]).items()}


class Run:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False):
        self.cfg, self.dir, self.ckpt_root = cfg, run_dir, run_dir / "checkpoints"
        self.started = time.perf_counter()
        torch.manual_seed(cfg.seed)
        self.gen_threads, self.train_threads = cfg.thread_budget()
        self.task = cfg.task.build()
        ckpt = checkpoint.latest(self.ckpt_root) if resume else None
        if resume and ckpt is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {self.ckpt_root}")
        m = cfg.model
        self.model, self.tokenizer = load_model_and_tokenizer(
            str(ckpt) if ckpt else m.name_or_path, TinySize(m.hidden, m.layers, m.heads), cfg.seed
        )
        self.state: dict | None = checkpoint.load_state(ckpt) if ckpt else None
        if self.state:
            checkpoint.set_rng_state(self.state["rng"])
        self.wall_before = self.state["wall_seconds"] if self.state else 0.0  # earlier sessions of a resumed run
        self.sampling = cfg.sampling(self.task.stop_strings)
        self.rewards = cfg.message_rewards(self.task)  # SPOC: per message; None: the task's scorer, per rollout
        self.heldout = self.task.heldout()

    def request(self, batch_index: int) -> GenerateRequest:
        n = self.cfg.rollout.prompts_per_step
        indices = list(range(batch_index * n, (batch_index + 1) * n))
        items = [self.task.train_item(i) for i in indices]
        return GenerateRequest(
            batch_index,
            indices,
            [encode_prompt(self.tokenizer, it.prompt) for it in items],
            [it.answer for it in items],
            self.cfg.rollout.samples_per_prompt,
            seed=self.cfg.seed * 1_000_003 + batch_index,
        )

    def evaluate(self) -> EvalResult:
        """Greedy held-out accuracy (SPOC: of the answer it ends on, plus its self-correction metrics)."""
        scorer, messages = heldout_scorers(self.task, self.rewards)
        self.last_eval = evaluate(
            self.model, self.tokenizer, self.heldout, scorer, self.sampling, message_scorer=messages
        )
        return self.last_eval

    def heldout_metrics(self) -> dict:
        result = self.evaluate()
        metrics = {"heldout_accuracy": result.accuracy} | {f"heldout_{k}": v for k, v in result.message_metrics.items()}
        return metrics | self.audit(result)

    def audit(self, result: EvalResult) -> dict:
        """Gold-judge audit of a run rewarded by a reward model or judge: its reward of the held-out greedy
        completions beside their accuracy by the task's verifier (the gold), and the gap; reward hacking
        shows as a reward that rises while the gold does not. A reward model's logit goes through a sigmoid
        (as in `relayrl tts`) so that both are in [0, 1]."""
        if self.cfg.reward.source == "task":
            return {}
        fn, scores, failures = self.cfg.reward_fn(self.task), [], 0
        for o in result.outputs:
            prompt = self.tokenizer.decode(encode_prompt(self.tokenizer, o["prompt"]), skip_special_tokens=True)
            try:
                value = float(fn(o["greedy"], o["answer"], prompt=prompt))
            except Exception:  # a judge that fails is counted, never fatal
                failures += 1
                continue
            scores.append(preference_probability(value) if self.cfg.reward.source == "reward_model" else value)
        mean = sum(scores) / len(scores) if scores else None
        gap = None if mean is None else mean - result.accuracy
        return {"heldout_reward": mean, "heldout_gold_gap": gap, "heldout_reward_failures": failures}

    def prepare(self, stop, show_progress: bool = True) -> None:
        """The phases before RL (the recipe's), each resumed from the checkpoint state; nothing once RL began."""
        if self.cfg.recipe == "spoc":
            spoc.prepare(self, stop, show_progress)
        elif self.state is None:
            t0 = time.perf_counter()
            self.warm_start(stop, show_progress)
            self.start_rl(time.perf_counter() - t0)

    def supervise(
        self, batch: Callable[[int], list[Sequence]], steps: int, lr: float, description: str, stop, show_progress: bool
    ) -> None:
        """`steps` supervised steps on `batch(step)`, on all cores (nothing else runs yet)."""
        torch.set_num_threads(min(self.gen_threads + self.train_threads, os.cpu_count() or 1))
        trainer = Trainer(
            self.model, dataclasses.replace(self.cfg.optim, lr=lr), self.cfg.algorithm, self.tokenizer.pad_token_id
        )
        for step in track(range(steps), description=description, disable=not show_progress):
            if stop.requested:
                raise KeyboardInterrupt
            trainer.step(batch(step), supervised=True)

    def warm_start(self, stop, show_progress: bool = True) -> None:
        """Supervised steps on the task's worked solutions."""
        s, eos = self.cfg.sft, [self.tokenizer.eos_token_id]

        def batch(step: int) -> list[Sequence]:
            # negative indices: a stream of its own, disjoint from the RL prompts (0, 1, 2, ...)
            items = [self.task.train_item(-1 - step * s.batch_size - i) for i in range(s.batch_size)]
            return [
                Sequence(
                    encode_prompt(self.tokenizer, it.prompt),
                    self.tokenizer(it.solution, add_special_tokens=False)["input_ids"] + eos,
                )
                for it in items
            ]

        self.supervise(batch, s.steps, s.lr, "SFT warm start", stop, show_progress)

    def start_rl(self, sft_seconds: float, **extra) -> None:
        """The held-out accuracy RL starts from, and a fresh RL state saved as checkpoint `sft`."""
        result = self.evaluate()
        self.state = {
            "phase": "rl",
            "step": 0,
            "pending": [],
            "optimizer": None,
            "sft_seconds": sft_seconds,
            "heldout_start": result.accuracy,
            "heldout_interval_start": result.interval,
            "heldout_messages_start": result.message_metrics,
            "heldout_audit_start": self.audit(result),
            "counters": {
                "dropped_stale": 0,
                "reward_failures": 0,
                "trained_tokens": 0,
                "rollouts_trained": 0,
                "rl_seconds": 0.0,
            },
            **extra,
        }
        self.save("sft")

    def trainer(self):
        """In this process, or (executors=ray, ray.trainer_ranks=K) K data-parallel Ray actors."""
        torch.set_num_threads(self.train_threads)
        ref = copy.deepcopy(self.model).eval() if self.cfg.algorithm.kl_coef > 0 else None
        if ref is not None and (self.ckpt_root / "sft").exists():
            ref, _ = load_model_and_tokenizer(str(self.ckpt_root / "sft"))
        args = (self.cfg.optim, self.cfg.algorithm, self.tokenizer.pad_token_id, self.cfg.rollout.temperature)
        if self.cfg.executors == "ray" and self.cfg.ray.trainer_ranks:
            from relayrl.executors.ray_actors import RayTrainer

            trainer = RayTrainer(self.cfg.ray, self.model, ref, *args, threads=self.train_threads)
        else:
            trainer = Trainer(self.model, *args, ref)
        if self.state and self.state["optimizer"]:
            trainer.load_state_dict(self.state["optimizer"])
        return trainer

    def generator(self):
        args = (self.model.config, self.tokenizer, self.sampling, self.rewards.format.parse if self.rewards else None)
        if self.cfg.executors == "ray":
            from relayrl.executors.ray_actors import RayGenerator  # Ray is imported only by runs that use it

            return RayGenerator(self.cfg.ray, *args, threads=self.gen_threads)
        return ProcessGenerator(*args, threads=self.gen_threads) if self.cfg.mode == "async" else LocalGenerator(*args)

    def scorer(self):
        if self.cfg.executors == "ray":
            from relayrl.executors.ray_actors import RayScorer

            return RayScorer(self.cfg.ray, self.cfg.reward_fn(self.task), self.cfg.reward)
        return VerifierScorer(self.cfg.reward_fn(self.task), self.cfg.reward)

    def wall_seconds(self) -> float:
        """Since the run began, set-up and SFT included, summed over resumed sessions."""
        return self.wall_before + time.perf_counter() - self.started

    def save(self, name: str, **state) -> None:
        self.state.update(state, wall_seconds=self.wall_seconds())
        checkpoint.save(self.ckpt_root, name, self.model, self.tokenizer, self.state, self.cfg.keep_checkpoints)

    def log_summary(self, records: list[dict], final: EvalResult) -> dict:
        c = self.state["counters"]
        return {
            "mode": self.cfg.mode,
            "recipe": self.cfg.recipe,
            "task": self.task.name,
            "model": self.cfg.model.name_or_path,
            "steps": self.state["step"],
            "heldout_accuracy_start": self.state["heldout_start"],
            "heldout_interval_start": self.state["heldout_interval_start"],
            "heldout_accuracy_end": final.accuracy,
            "heldout_interval_end": final.interval,
            "heldout_messages_start": self.state["heldout_messages_start"],
            "heldout_messages_end": final.message_metrics,
            "heldout_audit_start": self.state.get("heldout_audit_start", {}),
            "heldout_size": len(self.heldout),
            "wall_seconds": self.wall_seconds(),
            "rl_seconds": c["rl_seconds"],
            "sft_seconds": self.state["sft_seconds"],
            "trained_tokens_per_second": c["trained_tokens"] / max(c["rl_seconds"], 1e-9),
            "dropped_stale": c["dropped_stale"],
            "rollouts_trained": c["rollouts_trained"],
            "reward_failures": c["reward_failures"],
            "final_reward": records[-1].get("reward") if records else None,
            "pair_sft": self.state.get("pair_sft"),
        }
