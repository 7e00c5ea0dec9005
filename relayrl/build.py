"""What a config builds: the task, how it samples, what rewards it, and the executors (trainer, generator, reward
scorer), local or Ray actors. The config itself (config.py) only declares and checks settings."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from relayrl import adapters
from relayrl.config import Config
from relayrl.environments import Environment, make_environment
from relayrl.executors.generator import GeneratorSpec, LocalGenerator, ProcessGenerator
from relayrl.generation.sampler import SamplingConfig
from relayrl.models import load_model_and_tokenizer
from relayrl.rewards.judge import make_judge
from relayrl.rewards.model_scorer import RewardModelScorer
from relayrl.rewards.spoc import SpocRewards
from relayrl.rewards.verifier import VerifierScorer
from relayrl.tasks import make_task
from relayrl.tasks.base import Scorer, Task
from relayrl.training.trainer import Trainer

if TYPE_CHECKING:
    from relayrl.run import Run


def task(cfg: Config) -> Task:
    return make_task(cfg.task.name, cfg.task)


def environment(cfg: Config) -> Environment | None:
    return make_environment(cfg.environment)


def sampling(cfg: Config, stop_strings: tuple[str, ...]) -> SamplingConfig:
    """How rollouts (and held-out completions) are sampled; SPOC's run to its stop rule."""
    r = cfg.rollout
    single = SamplingConfig(r.max_new_tokens, r.temperature, r.top_p, tuple(stop_strings))
    if cfg.recipe != "spoc":
        return single
    return dataclasses.replace(single, max_new_tokens=cfg.spoc.max_new_tokens, stop_rule=cfg.spoc.format())


def reward_fn(cfg: Config, task: Task):
    """What rewards a rollout: SPOC's per-message rewards, a reward model, a judge, or the task's verifier."""
    r = cfg.reward
    if cfg.recipe == "spoc":
        return message_rewards(cfg, task)
    if r.source == "reward_model":
        return RewardModelScorer(r.model, critiques=r.critiques)
    if r.source == "judge":
        return make_judge(r, r.judge_kind)
    return task.scorer


def message_rewards(cfg: Config, task: Task) -> SpocRewards | None:
    """SPOC's per-message rewards over the task's scorer; None: one reward per rollout."""
    return SpocRewards(cfg.spoc.format(), task.scorer) if cfg.recipe == "spoc" else None


def thread_budget(cfg: Config) -> tuple[int, int]:
    """Torch threads of (generator, trainer): see ThreadsConfig."""
    cores = os.cpu_count() or 1
    gen = cfg.threads.generator or (max(1, cores // 2) if cfg.mode == "async" else cores)
    return gen, cfg.threads.trainer or cores


def heldout_scorers(
    task: Task, rewards: SpocRewards | None
) -> tuple[Scorer, Callable[[str, str], list[tuple[str, float]]] | None]:
    """What held-out accuracy scores, and what to report per message: SPOC's answer is the one it ends on."""
    return (rewards.final, rewards.messages) if rewards else (task.scorer, None)


def trainer(run: Run):
    """In this process, or (executors=ray, ray.trainer_ranks=K) K data-parallel Ray actors."""
    cfg = run.cfg
    torch.set_num_threads(run.train_threads)
    ref = None
    if cfg.algorithm.kl_coef > 0 and not cfg.model.lora.rank:  # the policy RL started from (LoRA: adapters off)
        sft = run.ckpt_root / "sft"
        ref = load_model_and_tokenizer(str(sft))[0] if sft.exists() else copy.deepcopy(run.model).eval()
    # Dr. GRPO's constant normaliser defaults to the generation budget
    algo = dataclasses.replace(
        cfg.algorithm, aggregation_length=cfg.algorithm.aggregation_length or run.sampling.max_new_tokens
    )
    args = (cfg.optim, algo, run.tokenizer.pad_token_id, cfg.rollout.temperature)
    if cfg.executors == "ray" and cfg.ray.trainer_ranks:
        from relayrl.executors.ray_actors import RayTrainer  # Ray is imported only by runs that use it

        built = RayTrainer(cfg.ray, run.model, ref, *args, threads=run.train_threads, lora=cfg.model.lora)
    else:
        built = Trainer(run.model, *args, ref)
    if run.optimizer_state:
        built.load_state_dict(run.optimizer_state)
    return built


def generator(run: Run):
    """In this process (sync), a process of its own (async, or any vLLM engine: vLLM takes over its process's torch
    threads and starts a torch.distributed group), or Ray actors."""
    cfg = run.cfg
    split = run.rewards.format.parse if run.rewards else None
    adapter = adapters.layout(run.model) if adapters.is_adapted(run.model) else None
    spec = GeneratorSpec(run.model.config, run.tokenizer, run.sampling, split, cfg.generation, adapter, run.environment)
    if cfg.executors == "ray":
        from relayrl.executors.ray_actors import RayGenerator

        return RayGenerator(cfg.ray, spec, threads=run.gen_threads)
    if cfg.mode == "async" or cfg.generation.backend == "vllm":
        return ProcessGenerator(spec, threads=run.gen_threads)
    return LocalGenerator(spec)


def scorer(run: Run):
    cfg = run.cfg
    if cfg.executors == "ray":
        from relayrl.executors.ray_actors import RayScorer

        return RayScorer(cfg.ray, reward_fn(cfg, run.task), cfg.reward)
    return VerifierScorer(reward_fn(cfg, run.task), cfg.reward)
