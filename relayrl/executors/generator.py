"""Generator executors: the same four calls in-process or in a process of its own.

`publish(weights, version)` and `submit(request)` are queued in order, so a batch is always
sampled with the last version published before it was submitted: the run is deterministic
however the two processes are timed, and a generator never samples from a half-updated model.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.multiprocessing as mp
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from relayrl.adapters import AdapterLayout, merged
from relayrl.environments import Environment
from relayrl.errors import TrainingError
from relayrl.executors.weights import flatten, parameter_shapes
from relayrl.generation.engines import GenerationConfig, engine_environment, environment, make_engine
from relayrl.generation.episodes import Episode, run_episodes
from relayrl.generation.messages import Span, token_messages
from relayrl.generation.sampler import Sample, SamplingConfig
from relayrl.models import load_model_and_tokenizer
from relayrl.orphans import die_with_parent
from relayrl.rollout import Rollout
from relayrl.tasks.base import Item


@dataclass
class GenerateRequest:
    batch_index: int
    prompt_indices: list[int]
    prompt_ids: list[list[int]]
    items: list[Item]
    samples_per_prompt: int
    seed: int


Split = Callable[[str], list[Span]]
"""A completion's text -> its messages (e.g. SpocFormat.parse); picklable, to reach generator processes."""


@dataclass
class GeneratorSpec:
    """What every generator is built from; picklable, to reach generator processes and Ray actors."""

    model_config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase
    sampling: SamplingConfig
    split: Split | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    adapter: AdapterLayout | None = None  # model.lora: weights arrive as an adapter, merged into its base here
    environment: Environment | None = None  # multi-turn episodes (None: one completion per rollout)


class GeneratorWorker:
    """An engine that samples rollouts with the version it was last given."""

    def __init__(self, spec: GeneratorSpec, device: str = "cpu"):
        self.engine = make_engine(spec.generation, spec.model_config, spec.tokenizer, device)
        self.tokenizer, self.sampling, self.split, self.environment = (
            spec.tokenizer, spec.sampling, spec.split, spec.environment
        )  # fmt: skip
        self.adapter = spec.adapter
        # the base weights an adapter is merged into, loaded once (a sync then carries only the adapter), and the
        # buffer each version is merged into (the engine copies it in: it can be reused)
        self.base = flatten(load_model_and_tokenizer(self.adapter.base)[0]) if self.adapter else None
        self.merged = self.base.clone() if self.adapter else None
        self.received_numel = (  # what a sync delivers
            self.adapter.adapter if self.adapter else sum(s.numel() for _, s in parameter_shapes(spec.model_config))
        )

    @property
    def version(self) -> int:
        return self.engine.version

    def load(self, flat: torch.Tensor, version: int) -> None:
        self.engine.load(merged(self.base, flat, self.adapter, self.merged) if self.adapter else flat, version)

    def generate(self, req: GenerateRequest) -> tuple[list[Rollout], float]:
        """The batch's rollouts and the seconds sampling took."""
        start, n = time.perf_counter(), req.samples_per_prompt
        prompts = [p for p in req.prompt_ids for _ in range(n)]
        items = [it for it in req.items for _ in range(n)]
        version = self.version  # every rollout carries the version its engine sampled with
        decode = partial(self.tokenizer.decode, skip_special_tokens=True)
        if self.environment:

            def turn(contexts: list[list[int]], cfg: SamplingConfig, index: int) -> list[Sample]:
                # each turn its own seed: batch seeds are below 2**52 (Config.seed), so no turn's repeats another's
                return self.engine.sample(contexts, cfg, req.seed + index * 2**52)

            samples = run_episodes(turn, self.tokenizer, self.environment, items, prompts, self.sampling)
        else:
            samples = self.engine.sample(prompts, self.sampling, req.seed)
        rollouts = []
        for i, s in enumerate(samples):
            text = decode(s.completion_ids)
            if isinstance(s, Episode):
                messages, env_reward = s.messages, s.env_reward
            else:
                messages = token_messages(s.completion_ids, decode, self.split(text)) if self.split else []
                env_reward = 0.0
            rollouts.append(
                Rollout(
                    prompt_index=req.prompt_indices[i // n],
                    sample_index=i % n,
                    prompt_ids=prompts[i],
                    completion_ids=s.completion_ids,
                    logprobs=s.logprobs,
                    version=version,
                    text=text,
                    finish_reason=s.finish_reason,
                    answer=items[i].answer,
                    messages=messages,
                    prompt=decode(prompts[i]),
                    env_reward=env_reward,
                )
            )
        return rollouts, time.perf_counter() - start


class LocalGenerator:
    """In-process: generation runs when its result is collected."""

    def __init__(self, spec: GeneratorSpec):
        self.worker = GeneratorWorker(spec)
        self.queue: deque = deque()

    def publish(self, flat: torch.Tensor, version: int) -> None:
        self.queue.append(("weights", flat.clone(), version))

    def submit(self, req: GenerateRequest) -> None:
        self.queue.append(("generate", req))

    def collect(self) -> tuple[list[Rollout], float]:
        while True:
            kind, *args = self.queue.popleft()
            if kind == "weights":
                self.worker.load(*args)
            else:
                return self.worker.generate(*args)

    def stats(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        self.queue.clear()


def _serve(inbox, outbox, spec: GeneratorSpec, threads: int, parent: int) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the controller's to handle
    torch.set_num_threads(threads)
    try:
        worker = GeneratorWorker(spec)
    except Exception as e:  # e.g. vLLM missing or refusing the model: the controller reports it, not a dead pipe
        outbox.put(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            kind, *args = inbox.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the controller was killed: do not linger
                return
            continue
        if kind == "stop":
            return
        if kind == "weights":
            worker.load(*args)
        else:
            try:
                outbox.put(("ok", worker.generate(*args)))
            except Exception as e:
                outbox.put(("error", f"{type(e).__name__}: {e}"))


class ProcessGenerator:
    """A generator process with its own thread budget, so sampling overlaps training."""

    def __init__(self, spec: GeneratorSpec, threads: int = 1):
        ctx = mp.get_context("spawn")
        self.inbox, self.outbox = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=_serve, args=(self.inbox, self.outbox, spec, threads, os.getpid()), daemon=True)
        with environment(engine_environment(spec.generation, threads)):  # read when the process starts
            self.proc.start()

    def publish(self, flat: torch.Tensor, version: int) -> None:
        self.inbox.put(("weights", flat.clone(), version))  # the clone travels through shared memory

    def submit(self, req: GenerateRequest) -> None:
        self.inbox.put(("generate", req))

    def collect(self) -> tuple[list[Rollout], float]:
        while True:
            try:
                status, payload = self.outbox.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.proc.is_alive():
                    raise TrainingError(f"generator process died (exit code {self.proc.exitcode})") from None
        if status == "error":
            raise TrainingError(f"generator failed: {payload}")
        return payload

    def stats(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        if self.proc.is_alive():
            self.inbox.put(("stop",))
            self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
