"""How long each phase of one RL step takes on its devices: roofline estimates, one equation per phase.

generation: prefill is compute-bound (2 x matmul params FLOPs a prompt token); each decode step is bound by
    the larger of reading the weights and the live KV cache and its FLOPs, so a step costs about the same
    whether 1 or 100 rows are still running: the batch decodes for as long as its longest response.
training: 6 x matmul params FLOPs a trained token (forward and backward) at a stated efficiency, its
    gradient reduce-scatter and weight all-gather overlapped, then the optimizer's pass over its state.
weight sync: the generator-precision weights over the link; each generator device receives its shard and
    each trainer device sends its shard to every replica.
swap: colocated roles hand the devices over; the trainer's offloaded state crosses the host link each way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

from relayrl.plan.inputs import Device, ModelShape, Placement, PlanError, Precision, Workload

MEMORY_HEADROOM = 0.9  # of a device's memory that weights, KV cache and training state may fill


@dataclass(frozen=True)
class PhaseTimes:
    """Seconds of each phase of one step on its own devices (swap: one direction of a colocated hand-over)."""

    generate: float
    train: float
    sync: float = 0.0
    reward: float = 0.0
    swap: float = 0.0


def response_lengths(w: Workload, rows: int) -> list[int]:
    """`rows` response lengths at evenly spaced quantiles of the log-normal (deterministic, longest first)."""
    if w.response_cv == 0:
        return [round(w.response_mean)] * rows
    sigma2 = math.log(1 + w.response_cv**2)
    mu, sigma = math.log(w.response_mean) - sigma2 / 2, math.sqrt(sigma2)
    normal = NormalDist()
    lengths = [math.exp(mu + sigma * normal.inv_cdf((i + 0.5) / rows)) for i in range(rows)]
    return sorted((min(w.response_max, max(1, round(x))) for x in lengths), reverse=True)


def _sum_max_linear(a1: float, b1: float, a2: float, b2: float, t0: int, t1: int) -> float:
    """sum over integers t0 <= t < t1 of max(a1 + b1 t, a2 + b2 t): two arithmetic series either side of where
    the lines cross, so a decode of thousands of steps costs a few operations."""

    def series(a: float, b: float, lo: int, hi: int) -> float:
        n = hi - lo
        return n * a + b * (lo + hi - 1) * n / 2 if n > 0 else 0.0

    if t1 <= t0:
        return 0.0
    db = b1 - b2
    if db == 0:
        return series(a1, b1, t0, t1) if a1 >= a2 else series(a2, b2, t0, t1)
    cross = min(max(math.ceil((a2 - a1) / db), t0), t1)  # first t where line 1 is at or above line 2, if db > 0
    if db > 0:
        return series(a2, b2, t0, cross) + series(a1, b1, cross, t1)
    cross = min(max(math.floor((a2 - a1) / db) + 1, t0), t1)  # first t where line 2 is above line 1
    return series(a1, b1, t0, cross) + series(a2, b2, cross, t1)


def forward_overhead(m: ModelShape, d: Device, tp: int) -> float:
    return d.step_overhead + m.layers * (d.layer_overhead + (2 * d.allreduce_latency if tp > 1 else 0.0))


def gen_flops(d: Device, p: Precision) -> float:
    return d.fp8_flops if p.gen_bytes <= 1 and d.fp8_flops > 0 else d.flops


def decode_seconds(m: ModelShape, d: Device, p: Precision, tp: int, lengths: list[int], context: float) -> float:
    """Decode `lengths` (longest first) together on one replica of `tp` devices, rows leaving as they finish.

    Step t (t = 0 .. longest - 1) with a_t rows still running costs
        max((W + a_t kv (context + t)) / (tp B e_B), a_t (2 N + attn(context + t)) / (tp F e_F))
        + overhead + a_t row_overhead,
    W weight bytes, kv KV bytes a token, N matmul params, B bandwidth, F FLOP/s, e_* efficiencies."""
    weights, kv = m.params * p.gen_bytes, m.kv_bytes_per_token(p.gen_bytes)
    bw, fl = tp * d.bandwidth * d.bandwidth_efficiency, tp * gen_flops(d, p) * d.prefill_efficiency
    attn_per_ctx = m.attention_flops(1)
    total, t = 0.0, 0
    for i in range(len(lengths) - 1, -1, -1):  # shortest first: segments where the active count is constant
        active, end = i + 1, lengths[i]
        if end <= t:
            continue
        memory = ((weights + active * kv * context) / bw, active * kv / bw)
        compute = (active * (2 * m.matmul_params + attn_per_ctx * context) / fl, active * attn_per_ctx / fl)
        total += _sum_max_linear(*memory, *compute, t, end) + (end - t) * active * d.row_overhead
        t = end
    return total + t * forward_overhead(m, d, tp)


def prefill_seconds(m: ModelShape, d: Device, p: Precision, tp: int, prompts: float, prompt_tokens: float) -> float:
    """Compute-bound, unless so few tokens that reading the weights once takes longer."""
    flops = prompts * prompt_tokens * (2 * m.matmul_params + m.attention_flops(prompt_tokens / 2))
    compute = flops / (tp * gen_flops(d, p) * d.prefill_efficiency)
    memory = m.params * p.gen_bytes / (tp * d.bandwidth * d.bandwidth_efficiency)
    return max(compute, memory) + forward_overhead(m, d, tp)


def smallest_tp(m: ModelShape, d: Device, p: Precision, w: Workload, devices: int, reserved: float = 0.0) -> int:
    """The fewest devices (a power of two, at most `devices`) whose memory holds the weights and one row's KV,
    besides `reserved` bytes a device (training state that stays when colocated)."""
    tp = 1
    while tp <= devices:
        if _concurrent_rows(m, d, p, w, tp, reserved) >= 1:
            return tp
        tp *= 2
    left = f" besides {reserved / 1e9:.0f} GB each of training state" if reserved else ""
    raise PlanError(
        f"the generator does not fit: {m.name} at {p.gen_bytes:g} bytes a weight needs "
        f"{m.params * p.gen_bytes / 1e9:.1f} GB, {devices} x {d.name} hold {devices * d.memory / 1e9:.0f} GB{left}"
    )


def _concurrent_rows(m: ModelShape, d: Device, p: Precision, w: Workload, tp: int, reserved: float) -> int:
    free = tp * (d.memory * MEMORY_HEADROOM - reserved) - m.params * p.gen_bytes
    per_row = m.kv_bytes_per_token(p.gen_bytes) * (w.prompt_tokens + w.response_max)
    return max(0, math.floor(free / per_row))


@lru_cache(maxsize=4096)
def generate_seconds(
    m: ModelShape, d: Device, p: Precision, w: Workload, devices: int, tp: int, reserved: float = 0.0
) -> float:
    """One step's batch split evenly over `devices // tp` replicas; a replica whose memory cannot hold every
    row's KV cache runs them in waves (each wave a slice of the same length spread)."""
    replicas = devices // tp
    if replicas < 1:
        raise PlanError(f"Placement.gen_tp: {tp} is more than the generator's {devices} devices")
    rows = math.ceil(w.rows / replicas)
    concurrent = _concurrent_rows(m, d, p, w, tp, reserved)
    if concurrent < 1:
        raise PlanError(f"Placement.gen_tp: {tp} x {d.name} cannot hold {m.name}'s weights and one row's KV cache")
    waves = math.ceil(rows / concurrent)
    lengths = response_lengths(w, rows)
    prompts = rows / w.samples_per_prompt if w.share_prompts else rows
    total = prefill_seconds(m, d, p, tp, prompts, w.prompt_tokens)
    for k in range(waves):
        total += decode_seconds(m, d, p, tp, lengths[k::waves], w.prompt_tokens)
    return total


def fastest_tp(m: ModelShape, d: Device, p: Precision, w: Workload, devices: int, reserved: float = 0.0) -> int:
    """The replica size that generates fastest: a power of two from the smallest that fits up to the device's
    `max_tp` (its fast-interconnect domain), unless the smallest that fits is already larger."""
    tp = smallest_tp(m, d, p, w, devices, reserved)
    sizes = [tp]
    while tp * 2 <= min(devices, d.max_tp):
        tp *= 2
        sizes.append(tp)
    return min(sizes, key=lambda t: generate_seconds(m, d, p, w, devices, t, reserved))


def train_flops(m: ModelShape, w: Workload) -> float:
    """6 N D plus attention: forward and backward of every trained token (and the extra forward passes)."""
    prompt_rows = w.prompts if w.share_prompts else w.rows
    tokens = prompt_rows * w.prompt_tokens + w.rows * w.response_mean
    context = (w.prompt_tokens + w.response_mean) / 2
    return tokens * (2 * m.matmul_params + m.attention_flops(context)) * (3 + w.extra_forwards)


def optimizer_seconds(m: ModelShape, d: Device, p: Precision, devices: int) -> float:
    """The optimizer's read and write of every byte of a device's share of the training state."""
    return 2 * m.params * p.train_state_bytes / devices / (d.bandwidth * d.bandwidth_efficiency)


def train_seconds(m: ModelShape, d: Device, p: Precision, w: Workload, devices: int) -> float:
    """6 N D (plus attention) FLOPs at the training efficiency, FSDP traffic overlapped, then the optimizer; and
    the fixed cost of a step."""
    if m.params * p.train_state_bytes / devices > d.memory * MEMORY_HEADROOM:
        raise PlanError(
            f"the trainer does not fit: {m.name} needs {m.params * p.train_state_bytes / 1e9:.0f} GB of training"
            f" state, {devices} x {d.name} hold {devices * d.memory * MEMORY_HEADROOM / 1e9:.0f} GB usable"
        )
    compute = train_flops(m, w) / (devices * d.flops * d.train_efficiency)
    comm = 3 * m.params * 2 * (devices - 1) / devices / d.link  # bf16: gather weights twice, scatter grads once
    return max(compute, comm) + optimizer_seconds(m, d, p, devices) + d.train_overhead


def sync_seconds(m: ModelShape, d: Device, p: Precision, gen_devices: int, tp: int, train_devices: int) -> float:
    """Each generator device receives its 1/tp shard; each trainer device sends its 1/T of a copy to every replica."""
    weights = m.params * p.gen_bytes
    receive = weights / tp / d.link
    send = (gen_devices // tp) * weights / train_devices / d.link
    return max(receive, send)


def swap_seconds(m: ModelShape, d: Device, p: Precision, devices: int) -> float:
    return m.params * p.offload_bytes / devices / d.host_link


def phase_times(m: ModelShape, d: Device, p: Precision, w: Workload, place: Placement) -> tuple[PhaseTimes, int]:
    """Every phase's seconds for this placement, and the generator's tensor-parallel degree. Colocated, the
    training state that is not offloaded stays on the devices and the generator's KV cache gets the rest."""
    for part in (m, d, p, w, place):
        part.check()
    gen_devices, colocated = place.generator_devices, place.kind == "colocated"
    reserved = m.params * (p.train_state_bytes - p.offload_bytes) / place.train_devices if colocated else 0.0
    tp = place.gen_tp or fastest_tp(m, d, p, w, gen_devices, reserved)
    times = PhaseTimes(
        generate=generate_seconds(m, d, p, w, gen_devices, tp, reserved),
        train=train_seconds(m, d, p, w, place.train_devices),
        sync=sync_seconds(m, d, p, gen_devices, tp, place.train_devices),
        reward=w.reward_seconds,
        swap=swap_seconds(m, d, p, place.train_devices) if colocated else 0.0,
    )
    return times, tp
