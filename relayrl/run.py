"""What a training run is made of: its config, folder, task, model and lasting state, new or resumed."""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path

import torch

from relayrl import adapters, build
from relayrl.config import Config, load_config, to_yaml
from relayrl.executors.generator import GenerateRequest
from relayrl.generation.sampler import encode_prompt
from relayrl.models import TinySize, load_model_and_tokenizer
from relayrl.state import RunState
from relayrl.training import checkpoint


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


def remove_unstarted(run_dir: Path) -> None:
    """A run that failed before its first checkpoint has nothing to resume: leave no folder behind."""
    if checkpoint.latest(run_dir / "checkpoints") is None:
        shutil.rmtree(run_dir, ignore_errors=True)


class Run:
    """The parts every phase of a run shares. `state` is None until the first checkpoint's state is made
    (a new run, or a resumed one that was stopped before it: it starts again, and being deterministic, the same)."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False):
        self.cfg, self.dir, self.ckpt_root = cfg, run_dir, run_dir / "checkpoints"
        self.started = time.perf_counter()
        torch.manual_seed(cfg.seed)
        self.gen_threads, self.train_threads = build.thread_budget(cfg)
        self.task = build.task(cfg)
        self.environment = build.environment(cfg)
        ckpt = checkpoint.latest(self.ckpt_root) if resume else None
        m = cfg.model
        self.model, self.tokenizer = load_model_and_tokenizer(
            str(ckpt) if ckpt else m.name_or_path,
            TinySize(m.hidden, m.layers, m.heads),
            cfg.seed,
            train_adapter=ckpt is not None and m.lora.rank > 0,
        )
        if m.lora.rank and not adapters.is_adapted(self.model):  # the warm start trains adapters too (see start_rl)
            self.model = adapters.apply(self.model, m.lora, m.name_or_path)
        self.state: RunState | None = None
        self.optimizer_state: dict | None = None  # the trainer's, to continue from
        if ckpt:
            self.state, self.optimizer_state = checkpoint.load(ckpt)  # restores the RNGs too
        self.wall_before = self.state.wall_seconds if self.state else 0.0  # earlier sessions of a resumed run
        self.sampling = build.sampling(cfg, self.task.stop_strings)
        self.rewards = build.message_rewards(cfg, self.task)  # SPOC: per message; None: the task's scorer, per rollout
        self.heldout = self.task.heldout()

    def request(self, batch_index: int) -> GenerateRequest:
        n = self.cfg.rollout.prompts_per_step
        indices = list(range(batch_index * n, (batch_index + 1) * n))
        items = [self.task.train_item(i) for i in indices]
        return GenerateRequest(
            batch_index,
            indices,
            [encode_prompt(self.tokenizer, it.prompt) for it in items],
            items,
            self.cfg.rollout.samples_per_prompt,
            seed=self.cfg.seed * 1_000_003 + batch_index,
        )

    def wall_seconds(self) -> float:
        """Since the run began, set-up and SFT included, summed over resumed sessions."""
        return self.wall_before + time.perf_counter() - self.started

    def save(self, name: str, optimizer: dict | None = None) -> None:
        self.state.wall_seconds = self.wall_seconds()
        keep = self.cfg.keep_checkpoints
        checkpoint.save(self.ckpt_root, name, self.model, self.tokenizer, self.state, optimizer, keep)
