"""Dataclass configs: defaults here, YAML files over them, dotted overrides over those.

Each field declares its constraints where it is declared (relayrl/schema.py); `validate` checks the whole tree,
then the rules across sections, before any work starts. Every error is one line naming the dotted field, and
where its value came from: a YAML file and line, or the command line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from relayrl.adapters import LoraConfig
from relayrl.environments import EnvironmentConfig
from relayrl.executors.ray_config import RayConfig
from relayrl.generation.engines import GenerationConfig
from relayrl.generation.messages import SpocFormat
from relayrl.models import TINY_ARCHS, missing_folder
from relayrl.rewards.verifier import RewardConfig
from relayrl.schema import ConfigError, check, choice, non_negative, nonempty, positive, setting
from relayrl.tasks import TASKS, ArithmeticConfig, DatasetConfig, ExpressionConfig, HumanEvalConfig, ReasoningGymConfig
from relayrl.tasks.reasoning_gym import unknown_generator
from relayrl.training.trainer import AlgorithmConfig, OptimConfig


@dataclass
class ModelConfig:
    name_or_path: str = nonempty("tiny-llama")  # a builtin (tiny-llama, tiny-qwen2), a hub id or a local folder
    hidden: int = setting(128, gt=0, le=2**16)  # the rest size builtin models only (2**16: past CPU memory)
    layers: int = setting(4, gt=0, le=1024)
    heads: int = positive(4)
    lora: LoraConfig = field(default_factory=LoraConfig)  # low-rank adapters instead of every weight (rank > 0)

    def rules(self) -> Iterator[tuple[str, str]]:
        if problem := missing_folder(self.name_or_path):
            yield "name_or_path", problem
        if self.name_or_path in TINY_ARCHS and self.hidden % (2 * self.heads):
            # rotary embeddings turn pairs of each head's dimensions
            yield "hidden", f"must be a multiple of 2 * model.heads ({2 * self.heads}); got {self.hidden}"


@dataclass
class TaskConfig:
    name: str = choice(*TASKS)
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    reasoning_gym: ReasoningGymConfig = field(default_factory=ReasoningGymConfig)
    expression: ExpressionConfig = field(default_factory=ExpressionConfig)  # a code task scored in the sandbox
    humaneval: HumanEvalConfig = field(default_factory=HumanEvalConfig)

    def rules(self) -> Iterator[tuple[str, str]]:
        if self.name == "dataset" and not self.dataset.path:
            yield "dataset.path", "task.name=dataset needs a hub name or a local .jsonl/.csv/.parquet file"
        if self.name == "reasoning_gym" and (problem := unknown_generator(self.reasoning_gym.name)):
            yield "reasoning_gym.name", problem


@dataclass
class SFTConfig:
    """Supervised warm start on the task's worked solutions, before RL."""

    # at most; `target_match` ends it sooner. 800 bounds the embedded default's time: 3 runs in 10 would go on to
    # 875-950 steps (about 90 s more), and they start RL at 30-34% at step 800 (docs/benchmarks.md)
    steps: int = non_negative(800)
    batch_size: int = positive(64)
    lr: float = positive(2e-3)
    # Stop once the model reproduces this share of held-aside worked solutions token for token (0: run every step).
    # A fixed step count ends the tiny model's warm start at 30-72% held-out accuracy over seeds and CPUs: it stops
    # on the steep part of a learning curve whose timing moves by 300 steps (docs/benchmarks.md)
    target_match: float = setting(0.3, ge=0, le=1)
    match_every: int = positive(25)  # steps between two checks
    match_items: int = positive(128)  # worked solutions held aside for the check


@dataclass
class SpocConfig:
    """recipe=spoc: multi-message rollouts, PairSFT on the model's own samples, then message-wise RL."""

    turn_cap: int = positive(3)  # solution attempts per completion; generation also stops at the first Yes
    max_new_tokens: int = positive(160)  # one whole multi-message completion (rollout.max_new_tokens: one solution)
    pair_questions: int = positive(2048)  # questions whose sampled solutions make the PairSFT data
    pair_samples: int = setting(8, ge=2)  # K solutions sampled per question; a pair needs a right and a wrong one
    pair_sft_steps: int = non_negative(200)  # batches of sft.batch_size
    pair_sft_lr: float = positive(1e-3)
    # who writes critiques: template (checkable steps, one per line) | teacher (a model)
    writer: str = choice("template", "teacher")
    teacher: str = ""  # writer=teacher: an HF causal LM, hub id or local folder
    verify_open: str = nonempty("\nCheck:")  # opens a verification message
    verify_ask: str = nonempty(" Correct?")  # precedes the verdict, " Yes" or " No"
    # a verification's RLOO pool: truth (role + the judged solution's reward) | role
    verify_baseline: str = choice("truth", "role")

    def format(self) -> SpocFormat:
        return SpocFormat(self.verify_open, self.verify_ask, self.turn_cap)


TTS_METHODS = ("single", "majority", "weighted_majority", "best_of_n", "tournament", "pdr")
# over multi-turn episodes (environment.name set; relayrl/tts/agentic.py)
AGENTIC_TTS_METHODS = ("single", "majority_output", "best_of_n_examples", "rtv_summaries", "pdr_summaries", "pass_at_n")


@dataclass
class TTSConfig:
    """`relayrl tts`: test-time scaling methods side by side on the held-out set (docs/recipes/test_time_scaling.md)."""

    methods: list[str] = setting(factory=lambda: list(TTS_METHODS), choices=TTS_METHODS, nonempty=True)  # noqa: RUF009
    n: int = positive(8)  # candidates per item, sampled once and shared by the methods (single: the first)
    votes: int = positive(1)  # judge votes per tournament match (RTV's V)
    scorer: str = choice("judge", "reward_model", "verifier")  # ranks candidates for best_of_n, weighted_majority, PDR
    match: str = choice("judge", "reward_model")  # decides tournament matches (RTV, PDR's final)
    judge_temperature: float = non_negative(0.0)  # > 0: a match's votes differ (each vote samples with its own seed)
    pdr_rounds: int = positive(2)
    pdr_keep: int = positive(2)  # the top K attempts of a round, given as context to the next
    pdr_width: int = non_negative(0)  # attempts per PDR round; 0: n
    items: int = non_negative(0)  # the first this many held-out items; 0: all
    # run instead of `methods` when environment.name is set: each candidate an episode (docs/recipes/agentic_tts.md)
    agentic_methods: list[str] = setting(  # noqa: RUF009
        factory=lambda: list(AGENTIC_TTS_METHODS), choices=AGENTIC_TTS_METHODS, nonempty=True
    )
    summarizer: str = choice("policy", "judge")  # who summarizes episodes: the policy, or the judge (reward.judge_*)
    summary_max_tokens: int = positive(128)


@dataclass
class RolloutConfig:
    prompts_per_step: int = positive(32)
    samples_per_prompt: int = positive(8)
    max_new_tokens: int = positive(32)
    temperature: float = non_negative(0.7)  # 0: greedy (evaluation only; see `validate`)
    top_p: float = setting(1.0, gt=0, le=1)


@dataclass
class ThreadsConfig:
    """Torch threads per side; 0 = auto: the trainer gets every core; in async mode the generator half of them.

    Training is the larger share of the work, so the generator sleeps part of each step; sharing its
    cores with the trainer beat an even split by 1.2x on 2 cores (docs/benchmarks.md)."""

    generator: int = setting(0, ge=0, le=1024)  # torch's thread pool crashes on a count far past any machine's
    trainer: int = setting(0, ge=0, le=1024)


@dataclass
class Config:
    seed: int = setting(0, ge=0, lt=2**32)  # sampling seeds are seed * 1_000_003 + batch: within torch's 64 bits
    mode: str = choice("async", "sync")
    recipe: str = choice("rl", "spoc")  # spoc: docs/recipes/spoc.md
    executors: str = choice("local", "ray")  # ray: generators and reward workers as Ray actors (docs/distributed.md)
    max_staleness: int = non_negative(1)  # async: rollouts may lag the trainer by at most this many versions
    steps: int = positive(250)
    eval_every: int = positive(25)
    checkpoint_every: int = positive(25)
    keep_checkpoints: int = positive(2)
    run_dir: str = nonempty("runs")
    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)  # multi-turn episodes, tools
    sft: SFTConfig = field(default_factory=SFTConfig)
    spoc: SpocConfig = field(default_factory=SpocConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # the sampling engine (docs/generation.md)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    # RL's step: at 3e-4 a warm start that samples right 1 time in 4 random-walks (docs/benchmarks.md, "The
    # embedded default over seeds"); 1e-4 lifts those by 25-35 points and the better ones as much as 3e-4 did
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    reward: RewardConfig = field(default_factory=RewardConfig)
    threads: ThreadsConfig = field(default_factory=ThreadsConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)

    def rules(self) -> Iterator[tuple[str, str]]:
        """The rules across sections; `check` has checked every field, and each section's own rules, before."""
        a, r, tts, samples = self.algorithm, self.reward, self.tts, self.rollout.samples_per_prompt
        if a.advantage in ("grpo", "rloo", "dr_grpo", "reinforce_pp_baseline") and samples < 2:
            yield "rollout.samples_per_prompt", f"{a.advantage} needs >= 2 samples per prompt; got {samples}"
        if self.recipe == "spoc" and samples < 2:
            yield "rollout.samples_per_prompt", f"spoc's message-wise RLOO needs >= 2 samples per prompt; got {samples}"
        if self.recipe == "spoc" and a.kl_in_reward and a.advantage != "gae":
            yield (
                "algorithm.kl_in_reward",
                "REINFORCE++'s KL returns need a reward per sequence; spoc's are per message",
            )
        if r.source == "reward_model" and not r.model:
            yield "reward.model", "reward.source=reward_model needs a reward-model folder (relayrl rm train)"
        if r.judge_url and r.judge_model_path:
            yield "reward.judge_model_path", "a judge is an endpoint (reward.judge_url) or a local model; not both"
        if r.source == "judge" and not (r.judge_url or r.judge_model_path):
            endpoint = "an OpenAI-compatible endpoint URL (or reward.judge_model_path: a judge model run in-process)"
            yield "reward.judge_url", f"reward.source=judge needs {endpoint}"
        if r.judge_backend != "native" and not r.judge_model_path:
            yield "reward.judge_backend", "samples a judge run in-process; it needs reward.judge_model_path"
        if r.judge_against == "sample" and r.judge_kind != "pairwise":
            yield "reward.judge_against", "sample compares two samples; it needs reward.judge_kind=pairwise"
        uses_scorer = {"best_of_n", "weighted_majority", "pdr"} & set(tts.methods)
        if uses_scorer and tts.scorer == "reward_model" and not r.model:
            yield "reward.model", "tts.scorer=reward_model needs a reward-model folder (relayrl rm train)"
        # with an environment `relayrl tts` runs the agentic methods too (RTV and PDR over episodes among them)
        runs = set(tts.methods) | (set(tts.agentic_methods) if self.environment.name else set())
        width = tts.pdr_width or tts.n
        if {"pdr", "pdr_summaries"} & runs and tts.pdr_keep > width:
            yield (
                "tts.pdr_keep",
                f"must be <= a round's attempts (tts.pdr_width, else tts.n: {width}); got {tts.pdr_keep}",
            )
        if (
            {"tournament", "pdr", "rtv_summaries", "pdr_summaries"} & runs
            and tts.match == "reward_model"
            and not r.model
        ):
            yield "reward.model", "tts.match=reward_model needs a reward-model folder (relayrl rm train)"
        if a.drop_zero_advantage and a.kl_coef > 0:
            yield "algorithm.drop_zero_advantage", "with kl_coef > 0 a rollout of advantage 0 still has a KL gradient"
        if self.recipe == "spoc" and a.advantage == "gae":
            yield "algorithm.advantage", "recipe=spoc rewards each message: its advantages are message-wise RLOO's"
        if a.dynamic_sampling and (self.recipe == "spoc" or samples < 2):
            yield "algorithm.dynamic_sampling", "keeps groups whose rewards differ: it needs >= 2 samples, not spoc"
        budget = self.spoc.max_new_tokens if self.recipe == "spoc" else self.rollout.max_new_tokens
        if a.overlong_buffer > budget:
            yield "algorithm.overlong_buffer", f"must be <= the budget, {budget} tokens; got {a.overlong_buffer}"
        if self.recipe == "spoc" and r.source != "task":
            yield "reward.source", "recipe=spoc rewards each message with the task's verifier; use task"
        if self.environment.name and self.recipe == "spoc":
            yield "environment.name", "recipe=spoc writes its messages in one generation; it takes no environment"
        if self.recipe == "spoc" and self.spoc.writer == "teacher" and not self.spoc.teacher:
            yield "spoc.teacher", "writer=teacher needs a model (hub id or local folder)"


def validate(cfg: Config, training: bool = True) -> Config:
    """Every field and rule of `cfg`; `training` adds the train command's own (eval and tts may decode greedily)."""
    check(cfg)
    if training and cfg.rollout.temperature == 0:
        # AIPO and PPO weigh each token by pi/mu, mu the policy rollouts are sampled from: greedy decoding is no
        # such policy, and gives a prompt's samples one completion, so every GRPO or RLOO advantage is 0
        raise ConfigError(
            f"rollout.temperature: must be > 0 for training; got {cfg.rollout.temperature}", "rollout.temperature"
        )
    return cfg


def split_args(args: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Command-line positional arguments -> (names, YAML files, dotted overrides)."""
    configs = [a for a in args if a.endswith((".yaml", ".yml"))]
    overrides = [a for a in args if "=" in a and a not in configs]
    return [a for a in args if a not in configs and a not in overrides], configs, overrides


def load_config(
    paths: str | list[str] | None = None, overrides: list[str] | None = None, training: bool = True
) -> Config:
    """Defaults, then each YAML file in order, then dotted overrides; validated (`training`: see `validate`)."""
    return merge(Config, paths, overrides, lambda cfg: validate(cfg, training))


def merge(
    schema: type,
    paths: str | list[str] | None,
    overrides: list[str] | None,
    validator: Callable[[Any], object] = check,
) -> Any:
    """A `schema` dataclass from its defaults, YAML files and dotted overrides, checked by `validator`. An error
    names the field and, when it was set, where: `(file.yaml:7)` or `(command line)`."""
    origin: dict[str, str] = {}  # dotted key -> where its value was last set
    blame = "config"  # what an OmegaConf error that names no key is about: the file or override being merged
    try:
        merged = _defaults(schema)
        for path in [paths] if isinstance(paths, str) else paths or []:
            blame = path
            layer, lines = _load_yaml(path)
            origin |= {key: f"{path}:{line}" for key, line in lines.items()}
            merged = OmegaConf.merge(merged, layer)
        for override in overrides or []:
            blame = override.partition("=")[0].strip()
            origin[blame] = "command line"
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([override]))
        blame = "config"
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or blame
        raise _located(ConfigError(f"{key}: {str(e).splitlines()[0]}", key), origin) from None
    try:
        validator(cfg)
    except ConfigError as e:
        raise _located(e, origin) from None
    return cfg


@functools.cache
def _defaults(schema: type) -> Any:
    """The schema's defaults as OmegaConf's structured config: built once (most of a load's time); merges copy it."""
    return OmegaConf.structured(schema)


def _load_yaml(path: str) -> tuple[Any, dict[str, int]]:
    """A YAML file as OmegaConf reads it, and the line of each of its dotted keys (OmegaConf keeps none). A
    missing file or a syntax error is one line naming the file (and the line)."""
    try:
        text = Path(path).read_text()
        root, layer = yaml.compose(text), OmegaConf.load(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: {getattr(e, 'strerror', None) or e}", path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)  # an error at the end of the file marks the line after it
        where = f"{path}:{min(mark.line + 1, len(text.splitlines()) or 1)}" if mark else path
        raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}", path) from None
    if root is not None and not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: not a mapping of settings (key: value)", path)
    lines, todo = {}, [("", root)]
    while todo:
        prefix, node = todo.pop()
        if isinstance(node, yaml.MappingNode):
            for key_node, value in node.value:
                key = f"{prefix}{key_node.value}"
                lines[key] = key_node.start_mark.line + 1
                todo.append((f"{key}.", value))
    return layer, lines


def _located(err: ConfigError, origin: dict[str, str]) -> ConfigError:
    """`err` with where its field was set (a list item's error: where its list was), if not left at the default."""
    where = origin.get(err.key.split("[")[0])
    return ConfigError(f"{err} ({where})", err.key) if where else err


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
