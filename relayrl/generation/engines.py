"""Generation engines: what samples rollouts in a generator, behind one small interface.

`native` is relayrl's own sampler over the Hugging Face model (sampler.py): the default, and the faster one on
a CPU at RL batch sizes (docs/generation.md). `vllm` is vLLM's engine (vllm_engine.py): paged attention and
continuous batching, where real runs on GPUs happen. Both take token ids and return token ids with the
behaviour log-probabilities mu, and both load a published weight version in place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerBase

from relayrl.executors.weights import flatten, load_flat
from relayrl.generation.sampler import Sample, SamplingConfig, sample
from relayrl.schema import choice, non_negative, positive, setting


@dataclass
class GenerationConfig:
    """How generators sample (docs/generation.md). The vllm_* settings apply to backend=vllm only."""

    backend: str = choice("native", "vllm")
    vllm_kv_cache_gb: int = setting(2, gt=0, le=2**14)  # CPU: VLLM_CPU_KVCACHE_SPACE, the KV cache's GiB
    vllm_gpu_memory_utilization: float = setting(0.5, gt=0, le=1)  # GPU (untested here): its share of the device
    vllm_max_model_len: int = non_negative(0)  # prompt + completion tokens; 0: the model's own limit, at most 4096
    # tokens per engine step; chunked prefill is off (vLLM's CPU sampler crashes on a seeded request it splits:
    # "CPU Generator does not use offset"), so a row's whole context must fit in one step
    vllm_max_num_batched_tokens: int = positive(16384)
    vllm_enforce_eager: bool = True  # CUDA graphs (False) pay off on a GPU only
    vllm_dtype: str = choice("float32", "bfloat16", "float16", "auto")  # float32: the trainer's own, for exact mu

    def rules(self) -> Iterator[tuple[str, str]]:
        if self.vllm_max_model_len > self.vllm_max_num_batched_tokens:
            yield (
                "vllm_max_num_batched_tokens",
                f"a prompt is read in one engine step (no chunked prefill): it must be >= vllm_max_model_len"
                f" ({self.vllm_max_model_len}); got {self.vllm_max_num_batched_tokens}",
            )


class Engine(Protocol):
    """Samples with the weight version it last loaded."""

    version: int

    def load(self, flat: torch.Tensor, version: int) -> None:
        """Take these weights (`weights.flatten`'s layout) as version `version`."""

    def sample(self, prompts: list[list[int]], cfg: SamplingConfig, seed: int) -> list[Sample]:
        """One completion per prompt; `seed` fixes them all (the same seed, weights and prompts: the same samples)."""

    def sleep(self) -> None:
        """Colocated on a GPU: give the device back to the trainer between batches (untested here: no GPU)."""

    def wake(self) -> None: ...

    def close(self) -> None: ...


class NativeEngine:
    """relayrl's sampler on a Hugging Face model built from the config (its weights come with the first `load`)."""

    def __init__(self, model_config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, device: str = "cpu"):
        self.model = AutoModelForCausalLM.from_config(model_config).eval().to(device)
        self.tokenizer, self.device, self.version = tokenizer, device, -1

    def load(self, flat: torch.Tensor, version: int) -> None:
        load_flat(self.model, flat)
        self.version = version

    def sample(self, prompts: list[list[int]], cfg: SamplingConfig, seed: int) -> list[Sample]:
        tok = self.tokenizer
        gen = torch.Generator().manual_seed(seed)
        return sample(self.model, prompts, cfg, tok.eos_token_id, tok.pad_token_id, gen, tok.decode)

    def sleep(self) -> None:
        if self.device != "cpu":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake(self) -> None:
        self.model.to(self.device)

    def close(self) -> None:
        pass


def make_engine(
    cfg: GenerationConfig, model_config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, device: str = "cpu"
) -> Engine:
    if cfg.backend == "vllm":
        from relayrl.generation.vllm_engine import VllmEngine  # vLLM is imported only by runs that use it

        return VllmEngine(cfg, model_config, tokenizer)  # vLLM places itself (a GPU if it finds one)
    return NativeEngine(model_config, tokenizer, device)


def engine_holding(cfg: GenerationConfig, model, tokenizer: PreTrainedTokenizerBase) -> Engine:
    """An engine of `cfg.backend` with a loaded model's weights (version 0)."""
    engine = make_engine(cfg, model.config, tokenizer)
    engine.load(flatten(model), 0)
    return engine


@contextlib.contextmanager
def sampler_for(cfg: GenerationConfig, model, tokenizer: PreTrainedTokenizerBase) -> Iterator:
    """What samples from a loaded model outside training (eval, tts, benchmarks): the model itself (the native
    sampler, `sample_texts`), or an engine holding its weights (backend=vllm), closed after."""
    if cfg.backend == "native":
        yield model
        return
    engine = engine_holding(cfg, model, tokenizer)
    try:
        yield engine
    finally:
        engine.close()


def engine_environment(cfg: GenerationConfig, threads: int) -> dict[str, str]:
    """Environment variables a process that will run this engine with `threads` threads must start with: vLLM's CPU
    attention plans its work for the OpenMP thread count a thread starts with (OMP_NUM_THREADS, read once at start),
    and a Ray actor runs its methods on threads other than the one that set torch's count."""
    if cfg.backend == "vllm":
        from relayrl.generation.vllm_engine import preload_libraries

        return preload_libraries() | {"OMP_NUM_THREADS": str(threads)}
    return {}


@contextlib.contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    """`variables` set in os.environ (which a process started meanwhile inherits), then restored."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
