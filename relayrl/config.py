"""Dataclass configs: defaults here, a YAML file over them, dotted overrides over that.

Unknown keys and wrong types are rejected by OmegaConf; `validate` checks values. Either
way the error names the field.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from relayrl.executors.ray_config import RayConfig
from relayrl.generation.messages import SpocFormat
from relayrl.generation.sampler import SamplingConfig
from relayrl.rewards.judge import make_judge
from relayrl.rewards.model_scorer import RewardModelScorer
from relayrl.rewards.spoc import SpocRewards
from relayrl.rewards.verifier import RewardConfig
from relayrl.tasks import ArithmeticConfig, DatasetConfig, ReasoningGymConfig, Task, make_task
from relayrl.training.trainer import AlgorithmConfig, OptimConfig


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    name_or_path: str = "tiny-llama"  # a builtin (tiny-llama, tiny-qwen2), a hub id or a local folder
    hidden: int = 128  # the rest size builtin models only
    layers: int = 4
    heads: int = 4


@dataclass
class TaskConfig:
    name: str = "arithmetic"
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    reasoning_gym: ReasoningGymConfig = field(default_factory=ReasoningGymConfig)

    def build(self) -> Task:
        return make_task(self.name, self.arithmetic, self.dataset, self.reasoning_gym)


@dataclass
class SFTConfig:
    """Supervised warm start on the task's worked solutions, before RL."""

    steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3


@dataclass
class SpocConfig:
    """recipe=spoc: multi-message rollouts, PairSFT on the model's own samples, then message-wise RL."""

    turn_cap: int = 3  # solution attempts per completion; generation also stops at the first Yes
    max_new_tokens: int = 160  # one whole multi-message completion (rollout.max_new_tokens: one solution)
    pair_questions: int = 2048  # questions whose sampled solutions make the PairSFT data
    pair_samples: int = 8  # K solutions sampled per question
    pair_sft_steps: int = 200  # batches of sft.batch_size
    pair_sft_lr: float = 1e-3
    writer: str = "template"  # who writes critiques: template (checkable steps, one per line) | teacher (a model)
    teacher: str = ""  # writer=teacher: an HF causal LM, hub id or local folder
    verify_open: str = "\nCheck:"  # opens a verification message
    verify_ask: str = " Correct?"  # precedes the verdict, " Yes" or " No"
    verify_baseline: str = "truth"  # a verification's RLOO pool: truth (role + the judged solution's reward) | role

    def format(self) -> SpocFormat:
        return SpocFormat(self.verify_open, self.verify_ask, self.turn_cap)


TTS_METHODS = ("single", "majority", "weighted_majority", "best_of_n", "tournament", "pdr")


@dataclass
class TTSConfig:
    """`relayrl tts`: test-time scaling methods side by side on the held-out set (docs/recipes/test_time_scaling.md)."""

    methods: list[str] = field(default_factory=lambda: list(TTS_METHODS))
    n: int = 8  # candidates per item, sampled once and shared by the methods (single: the first)
    votes: int = 1  # judge votes per tournament match (RTV's V)
    scorer: str = "judge"  # ranks candidates for best_of_n, weighted_majority and PDR: judge | reward_model | verifier
    match: str = "judge"  # decides tournament matches (RTV, PDR's final): judge | reward_model (Bradley-Terry)
    judge_temperature: float = 0.0  # > 0: a match's votes differ (each vote samples with its own seed)
    pdr_rounds: int = 2
    pdr_keep: int = 2  # the top K attempts of a round, given as context to the next
    pdr_width: int = 0  # attempts per PDR round; 0: n
    items: int = 0  # the first this many held-out items; 0: all


@dataclass
class RolloutConfig:
    prompts_per_step: int = 32
    samples_per_prompt: int = 8
    max_new_tokens: int = 32
    temperature: float = 0.7
    top_p: float = 1.0


@dataclass
class ThreadsConfig:
    """Torch threads per side; 0 = auto: the trainer gets every core; in async mode the generator half of them.

    Training is the larger share of the work, so the generator sleeps part of each step; sharing its
    cores with the trainer beat an even split by 1.2x on 2 cores (docs/benchmarks.md)."""

    generator: int = 0
    trainer: int = 0


@dataclass
class Config:
    seed: int = 0
    mode: str = "async"  # async | sync
    recipe: str = "rl"  # rl | spoc (docs/recipes/spoc.md)
    executors: str = "local"  # local | ray: generators and reward workers as Ray actors (docs/distributed.md)
    max_staleness: int = 1  # async: rollouts may lag the trainer by at most this many versions
    steps: int = 250
    eval_every: int = 25
    checkpoint_every: int = 25
    keep_checkpoints: int = 2
    run_dir: str = "runs"
    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    spoc: SpocConfig = field(default_factory=SpocConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4))
    reward: RewardConfig = field(default_factory=RewardConfig)
    threads: ThreadsConfig = field(default_factory=ThreadsConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)

    def sampling(self, stop_strings: tuple[str, ...]) -> SamplingConfig:
        """How rollouts (and held-out completions) are sampled; SPOC's run to its stop rule."""
        r = self.rollout
        single = SamplingConfig(r.max_new_tokens, r.temperature, r.top_p, tuple(stop_strings))
        if self.recipe != "spoc":
            return single
        return dataclasses.replace(single, max_new_tokens=self.spoc.max_new_tokens, stop_rule=self.spoc.format())

    def reward_fn(self, task: Task):
        """What rewards a rollout: SPOC's per-message rewards, a reward model, a judge, or the task's verifier."""
        r = self.reward
        if self.recipe == "spoc":
            return self.message_rewards(task)
        if r.source == "reward_model":
            return RewardModelScorer(r.model, critiques=r.critiques)
        if r.source == "judge":
            return make_judge(r, r.judge_kind)
        return task.scorer

    def message_rewards(self, task: Task) -> SpocRewards | None:
        """SPOC's per-message rewards over the task's scorer; None: one reward per rollout."""
        return SpocRewards(self.spoc.format(), task.scorer) if self.recipe == "spoc" else None

    def thread_budget(self) -> tuple[int, int]:
        cores = os.cpu_count() or 1
        gen = self.threads.generator or (max(1, cores // 2) if self.mode == "async" else cores)
        return gen, self.threads.trainer or cores


CHOICES = {
    "mode": ("async", "sync"),
    "recipe": ("rl", "spoc"),
    "executors": ("local", "ray"),
    "reward.source": ("task", "reward_model", "judge"),
    "reward.judge_kind": ("pointwise", "pairwise"),
    "reward.judge_against": ("reference", "sample"),
    "tts.scorer": ("judge", "reward_model", "verifier"),
    "tts.match": ("judge", "reward_model"),
    "ray.trainer_parallel": ("ddp", "fsdp2"),
    "ray.weight_sync": ("object_store", "broadcast"),
    "ray.placement": ("disaggregated", "colocated"),
    "spoc.writer": ("template", "teacher"),
    "algorithm.advantage": ("grpo", "rloo", "reinforce"),
    "algorithm.loss": ("aipo", "ppo"),
    "algorithm.aggregation": ("token", "sequence"),
    "task.name": ("arithmetic", "dataset", "reasoning_gym"),
    "task.dataset.on_bad_row": ("error", "skip"),
    "task.dataset.scorer": ("math", "exact"),
}
POSITIVE = [
    "steps",
    "rollout.prompts_per_step",
    "rollout.samples_per_prompt",
    "rollout.max_new_tokens",
    "optim.lr",
    "optim.micro_batch_tokens",
    "algorithm.rho",
    "reward.timeout",
    "reward.workers",
    "reward.judge_max_tokens",
    "sft.batch_size",
    "sft.lr",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "spoc.turn_cap",
    "spoc.max_new_tokens",
    "spoc.pair_questions",
    "spoc.pair_samples",
    "spoc.pair_sft_lr",
    "ray.generators",
    "ray.reward_workers",
    "ray.start_timeout",
    "ray.bucket_mb",
    "tts.n",
    "tts.votes",
    "tts.pdr_rounds",
    "tts.pdr_keep",
]
NON_NEGATIVE = [
    "reward.critiques",
    "max_staleness",
    "sft.steps",
    "rollout.temperature",
    "algorithm.kl_coef",
    "algorithm.clip_eps",
    "optim.grad_clip",
    "threads.generator",
    "threads.trainer",
    "spoc.pair_sft_steps",
    "ray.generator_cpus",
    "ray.generator_gpus",
    "ray.reward_cpus",
    "ray.max_restarts",
    "tts.judge_temperature",
    "tts.pdr_width",
    "tts.items",
]


def _get(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: Config) -> Config:
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(allowed)}; got {_get(cfg, key)!r}")
    for key in POSITIVE:
        if not _get(cfg, key) > 0:
            raise ConfigError(f"{key}: must be > 0; got {_get(cfg, key)!r}")
    for key in NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0; got {_get(cfg, key)!r}")
    if not 0 < cfg.rollout.top_p <= 1:
        raise ConfigError(f"rollout.top_p: must be in (0, 1]; got {cfg.rollout.top_p}")
    if cfg.algorithm.advantage in ("grpo", "rloo") and cfg.rollout.samples_per_prompt < 2:
        raise ConfigError(f"rollout.samples_per_prompt: {cfg.algorithm.advantage} needs >= 2 samples per prompt")
    if cfg.recipe == "spoc" and cfg.rollout.samples_per_prompt < 2:
        raise ConfigError("rollout.samples_per_prompt: spoc's message-wise RLOO needs >= 2 samples per prompt")
    if cfg.reward.source == "reward_model" and not cfg.reward.model:
        raise ConfigError("reward.model: reward.source=reward_model needs a reward-model folder (relayrl rm train)")
    if cfg.reward.judge_url and cfg.reward.judge_model_path:
        raise ConfigError(
            "reward.judge_model_path: a judge is an endpoint (reward.judge_url) or a local model; not both"
        )
    if cfg.reward.source == "judge" and not (cfg.reward.judge_url or cfg.reward.judge_model_path):
        raise ConfigError(
            "reward.judge_url: reward.source=judge needs an OpenAI-compatible endpoint URL"
            " (or reward.judge_model_path: a judge model run in-process)"
        )
    if cfg.reward.judge_against == "sample" and cfg.reward.judge_kind != "pairwise":
        raise ConfigError("reward.judge_against: sample compares two samples; it needs reward.judge_kind=pairwise")
    if not cfg.tts.methods or set(cfg.tts.methods) - set(TTS_METHODS):
        raise ConfigError(f"tts.methods: a list of {', '.join(TTS_METHODS)}; got {list(cfg.tts.methods)}")
    uses_scorer = {"best_of_n", "weighted_majority", "pdr"} & set(cfg.tts.methods)
    if uses_scorer and cfg.tts.scorer == "reward_model" and not cfg.reward.model:
        raise ConfigError("reward.model: tts.scorer=reward_model needs a reward-model folder (relayrl rm train)")
    uses_match = {"tournament", "pdr"} & set(cfg.tts.methods)
    if uses_match and cfg.tts.match == "reward_model" and not cfg.reward.model:
        raise ConfigError("reward.model: tts.match=reward_model needs a reward-model folder (relayrl rm train)")
    if cfg.algorithm.drop_zero_advantage and cfg.algorithm.kl_coef > 0:
        raise ConfigError(
            "algorithm.drop_zero_advantage: with kl_coef > 0 a rollout of advantage 0 still has a KL gradient"
        )
    if cfg.recipe == "spoc" and cfg.reward.source != "task":
        raise ConfigError("reward.source: recipe=spoc rewards each message with the task's verifier; use task")
    if cfg.recipe == "spoc" and cfg.spoc.writer == "teacher" and not cfg.spoc.teacher:
        raise ConfigError("spoc.teacher: writer=teacher needs a model (hub id or local folder)")
    return cfg


def split_args(args: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Command-line positional arguments -> (names, YAML files, dotted overrides)."""
    configs = [a for a in args if a.endswith((".yaml", ".yml"))]
    overrides = [a for a in args if "=" in a and a not in configs]
    return [a for a in args if a not in configs and a not in overrides], configs, overrides


def load_config(paths: str | list[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then each YAML file in order, then dotted overrides."""
    return validate(merge(Config, paths, overrides))


def merge(schema: type, paths: str | list[str] | None, overrides: list[str] | None):
    """A `schema` dataclass from its defaults, YAML files and dotted overrides; errors name the bad key."""
    try:
        merged = OmegaConf.structured(schema)
        for path in [paths] if isinstance(paths, str) else paths or []:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides or [])))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None


PRESETS = Path(__file__).parent / "tasks" / "presets"


def task_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def task_preset(name: str) -> str:
    """A preset's YAML file by name (gsm8k, math500, ...), or `name` itself if it is a YAML file."""
    if name.endswith((".yaml", ".yml")):
        return name
    if not (PRESETS / f"{name}.yaml").exists():
        raise ConfigError(f"--task: unknown preset {name!r}; presets are {', '.join(task_presets())}")
    return str(PRESETS / f"{name}.yaml")


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
