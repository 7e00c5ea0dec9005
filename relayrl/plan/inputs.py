"""What one RL step is made of, as the step-time model sees it: the model, the batch, the devices, the placement.

Every number is in base units (parameters, tokens, bytes, FLOP/s, bytes/s, seconds) so the equations in
phases.py read without conversions. `check()` on each dataclass names the first bad field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class PlanError(ValueError):
    """A plan input out of range; the message names the field."""


def _check_positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (isinstance(value, int | float) and value > 0):
            raise PlanError(f"{type(obj).__name__}.{name}: must be > 0; got {value!r}")


def _check_fraction(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (isinstance(value, int | float) and 0 < value <= 1):
            raise PlanError(f"{type(obj).__name__}.{name}: must be in (0, 1]; got {value!r}")


@dataclass(frozen=True)
class ModelShape:
    """A dense decoder: enough to count its matmul FLOPs, weight bytes and KV-cache bytes per token."""

    name: str
    params: float  # every parameter, embeddings included
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool = False
    intermediate: int = 0  # the MLP's width (calibration measures matmuls of this shape)

    def check(self) -> ModelShape:
        _check_positive(self, "params", "layers", "hidden", "heads", "kv_heads", "head_dim", "vocab")
        return self

    @property
    def matmul_params(self) -> float:
        """Parameters a token multiplies by: all but an untied input embedding, which is a table lookup."""
        return self.params - (0 if self.tied_embeddings else self.vocab * self.hidden)

    def kv_bytes_per_token(self, bytes_per_value: float) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value

    def attention_flops(self, context: float) -> float:
        """Forward FLOPs of one token's scores and weighted sum over `context` earlier tokens (QK^T and AV)."""
        return 4 * self.layers * self.heads * self.head_dim * context


@dataclass(frozen=True)
class Workload:
    """One step's batch: `prompts` x `samples_per_prompt` responses of spread-out lengths.

    Response lengths follow a log-normal with mean `response_mean` and coefficient of variation `response_cv`
    (std / mean), cut at `response_max`: the longest one sets how long a batch decodes (the long tail)."""

    prompts: int
    samples_per_prompt: int
    prompt_tokens: float
    response_mean: float
    response_max: int
    response_cv: float = 0.5
    share_prompts: bool = False  # a prompt's samples compute its tokens once (relayrl's sampler and trainer do)
    reward_seconds: float = 0.0  # scoring one step's batch, on reward workers of their own
    extra_forwards: int = 0  # per trained token besides the policy's forward and backward: a reference model, ...

    def check(self) -> Workload:
        _check_positive(self, "prompts", "samples_per_prompt", "prompt_tokens", "response_mean", "response_max")
        if self.response_mean > self.response_max:
            raise PlanError(
                f"Workload.response_mean: {self.response_mean} is longer than response_max {self.response_max}"
            )
        for name in ("response_cv", "reward_seconds", "extra_forwards"):
            if getattr(self, name) < 0:
                raise PlanError(f"Workload.{name}: must be >= 0; got {getattr(self, name)!r}")
        return self

    @property
    def rows(self) -> int:
        return self.prompts * self.samples_per_prompt

    @property
    def trained_tokens(self) -> float:
        """Prompt + response tokens of every rollout: what tokens/s counts (as relayrl's metrics do)."""
        return self.rows * (self.prompt_tokens + self.response_mean)


@dataclass(frozen=True)
class Device:
    """One accelerator (or one CPU core): published or measured peak figures, and how much of them software gets.

    `link` is the bandwidth from this device to a device of the other role (weight sync); `host_link` to host
    memory (offload when colocated). Fixed costs of a decode step, which dominate small models: `step_overhead`
    a forward pass, `layer_overhead` a layer (kernel launches, framework work), `row_overhead` a running row
    (sampling and bookkeeping); `allreduce_latency` is added twice a layer when a generator replica spans
    several devices (tensor parallelism)."""

    name: str
    flops: float  # dense matmul peak at the training precision, FLOP/s
    bandwidth: float  # memory bandwidth, bytes/s
    memory: float  # bytes
    link: float  # bytes/s
    host_link: float = math.inf  # bytes/s; inf: the device's memory is host memory (a CPU)
    fp8_flops: float = 0.0  # dense FP8 peak (0: none), used by a generator that samples in FP8
    train_efficiency: float = 0.4  # achieved / peak FLOP/s of training, counting 6ND
    prefill_efficiency: float = 0.5  # achieved / peak FLOP/s of prefill and of compute-bound decode steps
    bandwidth_efficiency: float = 0.7  # achieved / peak bandwidth of decode steps
    step_overhead: float = 0.0  # seconds per forward pass
    layer_overhead: float = 0.0  # seconds per layer per forward pass
    row_overhead: float = 0.0  # seconds per running row per decode step
    # seconds a training step spends that more devices do not shorten (small ops' dispatch, the loss's
    # bookkeeping, Python): 0 for large models on GPUs; what makes two CPU cores train a small model 1.6x, not 2x
    train_overhead: float = 0.0
    allreduce_latency: float = 0.0  # seconds per tensor-parallel all-reduce
    max_tp: int = 8  # devices a generator replica may span at full speed (a node's NVLink domain)

    def check(self) -> Device:
        _check_positive(self, "flops", "bandwidth", "memory", "link", "host_link", "max_tp")
        _check_fraction(self, "train_efficiency", "prefill_efficiency", "bandwidth_efficiency")
        for name in (
            "fp8_flops",
            "step_overhead",
            "layer_overhead",
            "row_overhead",
            "train_overhead",
            "allreduce_latency",
        ):
            if getattr(self, name) < 0:
                raise PlanError(f"Device.{name}: must be >= 0; got {getattr(self, name)!r}")
        return self


@dataclass(frozen=True)
class Precision:
    """Bytes per value: what the generator holds (weights and KV cache), what training keeps per parameter
    (weights, gradients, optimizer state), and how much of it leaves the device when colocated roles swap."""

    gen_bytes: float = 2  # bf16; 1 = FP8 generator (LlamaRL quantizes the 405B generator)
    train_state_bytes: float = 16  # bf16 weights + grads, fp32 master weights and two Adam moments
    offload_bytes: float = 12  # fp32 master weights and Adam moments go to host memory while generating

    def check(self) -> Precision:
        _check_positive(self, "gen_bytes", "train_state_bytes")
        if not 0 <= self.offload_bytes <= self.train_state_bytes:
            raise PlanError(
                f"Precision.offload_bytes: must be between 0 and train_state_bytes ({self.train_state_bytes}); "
                f"got {self.offload_bytes!r}"
            )
        return self


PLACEMENTS = ("colocated", "disaggregated")
MODES = ("sync", "async")


@dataclass(frozen=True)
class Placement:
    """Where the roles run and how they are scheduled.

    colocated: generation and training take turns on the same `train_devices` (the trainer's state offloaded
    while the generator samples); disaggregated: `gen_devices` sample while `train_devices` train. A generator
    replica spans `gen_tp` devices (tensor parallel; 0: the fewest whose memory holds it). The trainer shards
    its state over all its devices (FSDP)."""

    kind: str
    train_devices: int
    gen_devices: int = 0  # disaggregated only
    gen_tp: int = 0
    mode: str = "async"
    max_staleness: int = 1  # async: a batch may be sampled by weights this many versions old
    # the reward scorers: on workers of their own (LlamaRL's reward executors, relayrl's Ray reward pool), or
    # called by a controller that shares the trainer's process and devices (relayrl's local executors)
    scorer_on_trainer: bool = False

    def check(self) -> Placement:
        if self.kind not in PLACEMENTS:
            raise PlanError(f"Placement.kind: must be one of {PLACEMENTS}; got {self.kind!r}")
        if self.mode not in MODES:
            raise PlanError(f"Placement.mode: must be one of {MODES}; got {self.mode!r}")
        _check_positive(self, "train_devices")
        if self.kind == "disaggregated":
            _check_positive(self, "gen_devices")
        if self.gen_tp < 0 or self.max_staleness < 0:
            field = "gen_tp" if self.gen_tp < 0 else "max_staleness"
            raise PlanError(f"Placement.{field}: must be >= 0; got {getattr(self, field)!r}")
        return self

    @property
    def staleness_bound(self) -> int:
        return self.max_staleness if self.mode == "async" else 0

    @property
    def generator_devices(self) -> int:
        return self.train_devices if self.kind == "colocated" else self.gen_devices

    @property
    def total_devices(self) -> int:
        return self.train_devices + (self.gen_devices if self.kind == "disaggregated" else 0)
