"""What a training run is made of, built from its config, or from its folder to resume."""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from datetime import datetime
from pathlib import Path

import torch
from rich.progress import track

from relayrl.algorithms import advantages
from relayrl.config import Config, load_config, to_yaml
from relayrl.evaluation.evaluate import EvalResult, evaluate
from relayrl.executors.generator import GenerateRequest, LocalGenerator, ProcessGenerator
from relayrl.generation.sampler import encode_prompt
from relayrl.models import TinySize, load_model_and_tokenizer
from relayrl.rewards.verifier import VerifierScorer
from relayrl.rollout import Rollout
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


def to_sequences(rollouts: list[Rollout], estimator: str) -> list[Sequence]:
    """Rewards -> advantages, grouped by prompt; each token of a rollout carries its advantage."""
    groups: dict[int, list[Rollout]] = {}
    for r in rollouts:
        groups.setdefault(r.prompt_index, []).append(r)
    width = max(len(g) for g in groups.values())
    complete = [g for g in groups.values() if len(g) == width]  # a group cut by dropped rollouts is not comparable
    rewards = torch.tensor([[r.reward for r in g] for g in complete], dtype=torch.float64)
    adv = advantages.compute(estimator, rewards)
    return [
        Sequence(r.prompt_ids, r.completion_ids, r.logprobs, [float(adv[i, j])] * len(r.completion_ids))
        for i, g in enumerate(complete)
        for j, r in enumerate(g)
    ]


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
        self.last_eval = evaluate(self.model, self.tokenizer, self.heldout, self.task.scorer, self.sampling)
        return self.last_eval

    def warm_start(self, stop, show_progress: bool = True) -> dict:
        """Supervised steps on worked solutions, then the held-out accuracy RL starts from."""
        s, t0 = self.cfg.sft, time.perf_counter()
        torch.set_num_threads(min(self.gen_threads + self.train_threads, os.cpu_count() or 1))  # nothing else runs yet
        sft = Trainer(
            self.model, dataclasses.replace(self.cfg.optim, lr=s.lr), self.cfg.algorithm, self.tokenizer.pad_token_id
        )
        eos = [self.tokenizer.eos_token_id]
        for step in track(range(s.steps), description="SFT warm start", disable=not show_progress):
            if stop.requested:
                raise KeyboardInterrupt
            # negative indices: a stream of its own, disjoint from the RL prompts (0, 1, 2, ...)
            items = [self.task.train_item(-1 - step * s.batch_size - i) for i in range(s.batch_size)]
            sft.step(
                [
                    Sequence(
                        encode_prompt(self.tokenizer, it.prompt),
                        self.tokenizer(it.solution, add_special_tokens=False)["input_ids"] + eos,
                    )
                    for it in items
                ],
                supervised=True,
            )
        result = self.evaluate()
        self.state = {
            "step": 0,
            "pending": [],
            "optimizer": None,
            "sft_seconds": time.perf_counter() - t0,
            "heldout_start": result.accuracy,
            "heldout_interval_start": result.interval,
            "counters": {
                "dropped_stale": 0,
                "reward_failures": 0,
                "trained_tokens": 0,
                "rollouts_trained": 0,
                "rl_seconds": 0.0,
            },
        }
        self.save("sft")
        return self.state

    def trainer(self) -> Trainer:
        torch.set_num_threads(self.train_threads)
        ref = copy.deepcopy(self.model).eval() if self.cfg.algorithm.kl_coef > 0 else None
        if ref is not None and (self.ckpt_root / "sft").exists():
            ref, _ = load_model_and_tokenizer(str(self.ckpt_root / "sft"))
        trainer = Trainer(
            self.model,
            self.cfg.optim,
            self.cfg.algorithm,
            self.tokenizer.pad_token_id,
            self.cfg.rollout.temperature,
            ref,
        )
        if self.state and self.state["optimizer"]:
            trainer.load_state_dict(self.state["optimizer"])
        return trainer

    def generator(self):
        args = (self.model.config, self.tokenizer, self.sampling)
        return ProcessGenerator(*args, threads=self.gen_threads) if self.cfg.mode == "async" else LocalGenerator(*args)

    def scorer(self) -> VerifierScorer:
        return VerifierScorer(self.task.scorer, self.cfg.reward)

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
            "task": self.task.name,
            "model": self.cfg.model.name_or_path,
            "steps": self.state["step"],
            "heldout_accuracy_start": self.state["heldout_start"],
            "heldout_interval_start": self.state["heldout_interval_start"],
            "heldout_accuracy_end": final.accuracy,
            "heldout_interval_end": final.interval,
            "heldout_size": len(self.heldout),
            "wall_seconds": self.wall_seconds(),
            "rl_seconds": c["rl_seconds"],
            "sft_seconds": self.state["sft_seconds"],
            "trained_tokens_per_second": c["trained_tokens"] / max(c["rl_seconds"], 1e-9),
            "dropped_stale": c["dropped_stale"],
            "rollouts_trained": c["rollouts_trained"],
            "reward_failures": c["reward_failures"],
            "final_reward": records[-1].get("reward") if records else None,
        }
